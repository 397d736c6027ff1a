"""lab/apiserver"""
