"""Kubernetes' name rules (apimachinery's validation), as the API server applies them.

Every string an object carries into a rule, a chain name or a DNS answer passes one of these
first, so a name can only hold what Kubernetes allows: lowercase letters, digits, '-' and '.'.
Each check returns None when the value is valid, or the reason (the value cut short: an error
never repeats a huge input).
"""

from __future__ import annotations

import re

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def shown(value: object, limit: int = 40) -> str:
    """A value for an error message: a scalar's repr cut to `limit` characters, a container by its
    kind (its repr could be gigabytes: YAML aliases nest)."""
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value[: limit] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rule(pattern: re.Pattern, limit: int, what: str):
    def check(value: str) -> str | None:
        if len(value) > limit:
            return f"must be no more than {limit} characters, got {len(value)}"
        if not pattern.fullmatch(value):
            return f"{shown(value)} is not {what}"
        return None
    return check


dns1123_label = _rule(_DNS1123_LABEL, 63, "a DNS-1123 label (lowercase letters, digits and '-', "
                      "starting and ending with a letter or digit)")
dns1035_label = _rule(_DNS1035_LABEL, 63, "a DNS-1035 label (lowercase letters, digits and '-', "
                      "starting with a letter and ending with a letter or digit)")
dns1123_subdomain = _rule(_DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain (lowercase letters, digits, '-' "
                          "and '.', starting and ending with a letter or digit)")
label_value = _rule(_LABEL_VALUE, 63, "a valid label value")
