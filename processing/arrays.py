"""Checks on declared array layouts, made before a single byte is allocated (R12, R13).

A label is untrusted: its axis sizes, offsets and data types must fit in the file that it
describes, and within a size limit, or the product is refused with the file, the element and
the rule named.
"""

from __future__ import annotations

import math

import numpy as np

from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import ArrayLayout

__all__ = ["MAX_ARRAY_BYTES", "check_array_fits", "numpy_dtype"]

MAX_ARRAY_BYTES = 64 * 1024**3  # one array larger than this is refused outright


def numpy_dtype(layout: ArrayLayout, *, where: str) -> np.dtype[np.generic]:
    """The numpy dtype of a layout, byte order included."""
    try:
        dtype = np.dtype(layout.dtype)
    except TypeError:
        raise ProductRejected(f"{where}: data type {layout.dtype!r} is not a known type") from None
    return dtype.newbyteorder("<" if layout.byte_order == "little" else ">")


def check_array_fits(
    layout: ArrayLayout, *, file_size: int, where: str, max_bytes: int = MAX_ARRAY_BYTES
) -> int:
    """The array's size in bytes, once it is known to lie inside its file and the limit.

    ``where`` names the file and element for the error (e.g. ``"x.xml, Array_2D_Image 1"``).
    """
    itemsize = numpy_dtype(layout, where=where).itemsize
    nbytes = math.prod(layout.shape) * itemsize  # Python ints: no overflow on hostile sizes
    if nbytes > max_bytes:
        raise ProductRejected(
            f"{where}: declares {nbytes} bytes ({' x '.join(map(str, layout.shape))} x "
            f"{itemsize}), over the {max_bytes}-byte limit (rule: arrays are bounded)"
        )
    end = layout.offset_bytes + nbytes
    if end > file_size:
        raise ProductRejected(
            f"{where}: array ends at byte {end} but {layout.file} has {file_size} bytes "
            "(rule: a declared array must lie inside its file)"
        )
    return nbytes
