"""The combine methods and output dtypes a merge accepts: one list each, importing nothing."""

from __future__ import annotations

from typing import Literal, get_args

CombineMethod = Literal["linear", "ties", "dare_linear", "dare_ties"]
OutputDtype = Literal["auto", "bfloat16", "float16", "float32"]

COMBINE_METHODS: tuple[str, ...] = get_args(CombineMethod)
OUTPUT_DTYPES: tuple[str, ...] = get_args(OutputDtype)
