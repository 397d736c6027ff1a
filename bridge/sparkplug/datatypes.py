"""The Sparkplug B datatype numbers (Eclipse Sparkplug 3.0, 6.4.16), as a plain ``IntEnum`` so
that code reading metric types needs no protobuf import; a test keeps it equal to the
``DataType`` enum of ``sparkplug_b.proto``."""

from __future__ import annotations

from enum import IntEnum


class DataType(IntEnum):
    """A metric's (or a property's, a DataSet column's, a Template parameter's) datatype."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19
    PROPERTYSET = 20
    PROPERTYSETLIST = 21
    INT8_ARRAY = 22
    INT16_ARRAY = 23
    INT32_ARRAY = 24
    INT64_ARRAY = 25
    UINT8_ARRAY = 26
    UINT16_ARRAY = 27
    UINT32_ARRAY = 28
    UINT64_ARRAY = 29
    FLOAT_ARRAY = 30
    DOUBLE_ARRAY = 31
    BOOLEAN_ARRAY = 32
    STRING_ARRAY = 33
    DATETIME_ARRAY = 34

    @property
    def spec_name(self) -> str:
        """The name the specification (and the proto) gives it: ``UInt64``, ``Int8Array``."""
        return _SPEC_NAMES[self]


_SPEC_NAMES = {
    DataType.UNKNOWN: "Unknown",
    DataType.INT8: "Int8",
    DataType.INT16: "Int16",
    DataType.INT32: "Int32",
    DataType.INT64: "Int64",
    DataType.UINT8: "UInt8",
    DataType.UINT16: "UInt16",
    DataType.UINT32: "UInt32",
    DataType.UINT64: "UInt64",
    DataType.FLOAT: "Float",
    DataType.DOUBLE: "Double",
    DataType.BOOLEAN: "Boolean",
    DataType.STRING: "String",
    DataType.DATETIME: "DateTime",
    DataType.TEXT: "Text",
    DataType.UUID: "UUID",
    DataType.DATASET: "DataSet",
    DataType.BYTES: "Bytes",
    DataType.FILE: "File",
    DataType.TEMPLATE: "Template",
    DataType.PROPERTYSET: "PropertySet",
    DataType.PROPERTYSETLIST: "PropertySetList",
    DataType.INT8_ARRAY: "Int8Array",
    DataType.INT16_ARRAY: "Int16Array",
    DataType.INT32_ARRAY: "Int32Array",
    DataType.INT64_ARRAY: "Int64Array",
    DataType.UINT8_ARRAY: "UInt8Array",
    DataType.UINT16_ARRAY: "UInt16Array",
    DataType.UINT32_ARRAY: "UInt32Array",
    DataType.UINT64_ARRAY: "UInt64Array",
    DataType.FLOAT_ARRAY: "FloatArray",
    DataType.DOUBLE_ARRAY: "DoubleArray",
    DataType.BOOLEAN_ARRAY: "BooleanArray",
    DataType.STRING_ARRAY: "StringArray",
    DataType.DATETIME_ARRAY: "DateTimeArray",
}

# Integer datatypes: (width in bits, signed). Signed values travel as two's complement in the
# unsigned int_value (32-bit) or long_value (64-bit) field; reading the low ``width`` bits and
# sign-extending them gives the value whichever of the two fields an encoder used.
INTEGER_WIDTHS: dict[int, tuple[int, bool]] = {
    DataType.INT8: (8, True),
    DataType.INT16: (16, True),
    DataType.INT32: (32, True),
    DataType.INT64: (64, True),
    DataType.UINT8: (8, False),
    DataType.UINT16: (16, False),
    DataType.UINT32: (32, False),
    DataType.UINT64: (64, False),
}

TEXT_TYPES = frozenset({DataType.STRING, DataType.TEXT, DataType.UUID})

# Arrays (3.0): struct format of one element, packed little-endian into bytes_value.
# BooleanArray (bit-packed after a count) and StringArray (NUL-terminated) are read apart.
ARRAY_FORMATS: dict[int, str] = {
    DataType.INT8_ARRAY: "b",
    DataType.INT16_ARRAY: "h",
    DataType.INT32_ARRAY: "i",
    DataType.INT64_ARRAY: "q",
    DataType.UINT8_ARRAY: "B",
    DataType.UINT16_ARRAY: "H",
    DataType.UINT32_ARRAY: "I",
    DataType.UINT64_ARRAY: "Q",
    DataType.FLOAT_ARRAY: "f",
    DataType.DOUBLE_ARRAY: "d",
    DataType.DATETIME_ARRAY: "q",
}


def type_name(datatype: int | None) -> str:
    """The specification's name of a datatype number, for messages: ``UInt64``, ``#99``."""
    if datatype is None:
        return "none"
    try:
        return DataType(datatype).spec_name
    except ValueError:
        return f"#{datatype}"
