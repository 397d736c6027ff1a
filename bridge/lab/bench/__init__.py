"""lab/bench"""
