"""Object strings that a renderer writes into a rule, a comment, a chain name or a script.

The model already refuses names Kubernetes would refuse (model/names.py), so for real objects
this changes nothing. It is the second guard, for whatever reaches a renderer by another way:
no string from an object can end a quote, a word or a line of iptables-restore or nft input, or
overflow the kernel's name and comment limits.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._:/-]")
MAX_OBJECT_TEXT = 160  # room for kube-proxy's words around it within xt_comment's 256 and nft's names


def object_text(text: str) -> str:
    """`text` if it is safe to write as it is; otherwise every other character replaced by '_'."""
    if len(text) <= MAX_OBJECT_TEXT and not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub("_", text[:MAX_OBJECT_TEXT])
