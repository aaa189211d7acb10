"""kube-proxy's command-line flags, read as kube-proxy reads them, into a KubeProxyConfiguration.

`pyproxy run` has options of its own for the flags it shares with kube-proxy (--config,
--hostname-override, --kubeconfig, --proxy-mode, --cluster-cidr, --healthz-bind-address,
--metrics-bind-address, --v, --cleanup, --init-only, --write-config-to); every other kube-proxy flag
is in FLAGS below: the v1alpha1 field it sets and how its value is read. As in kube-proxy, these
flags build the configuration only when no --config file is given (the file wins; kube-proxy
keeps only the logging flags and --hostname-override over it), and an unknown flag is an error
in kube-proxy's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class FlagError(ValueError):
    pass


@dataclass(frozen=True)
class Flag:
    paths: tuple[str, ...]  # the v1alpha1 fields it sets ("iptables.masqueradeBit"); () : read, not applied
    kind: str = "str"  # str, bool, int, float, duration, list, gates


def _flag(*paths: str, kind: str = "str") -> Flag:
    return Flag(paths, kind)


FLAGS: dict[str, Flag] = {
    # API client
    "master": _flag(kind="str"),  # handled by the caller: the API server URL over the kubeconfig's
    "kube-api-content-type": _flag("clientConnection.contentType"),
    "kube-api-burst": _flag("clientConnection.burst", kind="int"),
    "kube-api-qps": _flag("clientConnection.qps", kind="float"),
    # the node and its servers
    "bind-address": _flag("bindAddress"),
    "bind-address-hard-fail": _flag("bindAddressHardFail", kind="bool"),
    "profiling": _flag("enableProfiling", kind="bool"),
    "show-hidden-metrics-for-version": _flag("showHiddenMetricsForVersion"),
    "feature-gates": _flag("featureGates", kind="gates"),
    "nodeport-addresses": _flag("nodePortAddresses", kind="list"),
    "oom-score-adj": _flag("oomScoreAdj", kind="int"),
    "config-sync-period": _flag("configSyncPeriod", kind="duration"),
    # local traffic
    "detect-local-mode": _flag("detectLocalMode"),
    "pod-bridge-interface": _flag("detectLocal.bridgeInterface"),
    "pod-interface-name-prefix": _flag("detectLocal.interfaceNamePrefix"),
    # rules: kube-proxy's --iptables-*sync-period and --masquerade-all serve every mode
    "masquerade-all": _flag("iptables.masqueradeAll", "nftables.masqueradeAll", kind="bool"),
    "iptables-masquerade-bit": _flag("iptables.masqueradeBit", kind="int"),
    "iptables-localhost-nodeports": _flag("iptables.localhostNodePorts", kind="bool"),
    "iptables-sync-period": _flag("syncPeriod", kind="duration"),
    "iptables-min-sync-period": _flag("minSyncPeriod", kind="duration"),
    "ipvs-sync-period": _flag("ipvs.syncPeriod", kind="duration"),
    "ipvs-min-sync-period": _flag("ipvs.minSyncPeriod", kind="duration"),
    "ipvs-scheduler": _flag("ipvs.scheduler"),
    "ipvs-strict-arp": _flag("ipvs.strictARP", kind="bool"),
    "ipvs-exclude-cidrs": _flag("ipvs.excludeCIDRs", kind="list"),
    "ipvs-tcp-timeout": _flag("ipvs.tcpTimeout", kind="duration"),
    "ipvs-tcpfin-timeout": _flag("ipvs.tcpFinTimeout", kind="duration"),
    "ipvs-udp-timeout": _flag("ipvs.udpTimeout", kind="duration"),
    # conntrack
    "conntrack-max-per-core": _flag("conntrack.maxPerCore", kind="int"),
    "conntrack-min": _flag("conntrack.min", kind="int"),
    "conntrack-tcp-timeout-established": _flag("conntrack.tcpEstablishedTimeout", kind="duration"),
    "conntrack-tcp-timeout-close-wait": _flag("conntrack.tcpCloseWaitTimeout", kind="duration"),
    "conntrack-tcp-be-liberal": _flag("conntrack.tcpBeLiberal", kind="bool"),
    "conntrack-udp-timeout": _flag("conntrack.udpTimeout", kind="duration"),
    "conntrack-udp-timeout-stream": _flag("conntrack.udpStreamTimeout", kind="duration"),
    # logging (component-base): the level is --v, the format logging.format
    "logging-format": _flag("logging.format"),
    "log-flush-frequency": _flag(kind="duration"),
    "log-json-info-buffer-size": _flag(kind="str"),
    "log-json-split-stream": _flag(kind="bool"),
    "log-text-info-buffer-size": _flag(kind="str"),
    "log-text-split-stream": _flag(kind="bool"),
    "vmodule": _flag(kind="str"),
    "version": _flag(kind="bool"),  # handled by the caller: print the version and exit
}


_GO_DURATION = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+|[-+]?0")


def _value(name: str, kind: str, text: str) -> Any:
    """The flag's value as pflag parses it, and its errors in pflag's words."""
    def invalid(what: str) -> FlagError:
        return FlagError(f'invalid argument "{text[:80]}" for "--{name}" flag: {what}')

    quoted = '"' + text[:80] + '"'
    if kind == "bool":
        if text in ("1", "t", "T", "true", "TRUE", "True"):
            return True
        if text in ("0", "f", "F", "false", "FALSE", "False"):
            return False
        raise invalid(f"strconv.ParseBool: parsing {quoted}: invalid syntax")
    if kind == "int":
        try:
            value = int(text, 0)
        except ValueError:
            raise invalid(f"strconv.ParseInt: parsing {quoted}: invalid syntax") from None
        if not -2 ** 31 <= value < 2 ** 31:  # kube-proxy's int flags are int32
            raise invalid(f"strconv.ParseInt: parsing {quoted}: value out of range")
        return value
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise invalid(f"strconv.ParseFloat: parsing {quoted}: invalid syntax") from None
    if kind == "duration":
        if not _GO_DURATION.fullmatch(text):
            missing_unit = re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", text)
            raise invalid(f"time: {'missing unit in' if missing_unit else 'invalid'} duration {quoted}")
        return text
    if kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind == "gates":
        gates = {}
        for item in (i.strip() for i in text.split(",") if i.strip()):
            key, sep, value = item.partition("=")
            if not sep:
                raise invalid("malformed pair, expect string=bool")
            if value.lower() not in ("true", "false", "1", "0", "t", "f"):
                raise invalid(f"invalid value of {key[:60]}: {value[:20]}, err: strconv.ParseBool: parsing "
                              f'"{value[:20]}": invalid syntax')
            gates[key.strip()] = value.lower() in ("true", "1", "t")
        return gates
    return text


def parse(args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """kube-proxy flags -> (a v1alpha1 overlay, {flag name: value} of every flag given)."""
    overlay: dict[str, Any] = {}
    given: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            if arg.startswith("-") and arg != "-" and arg != "--":
                raise FlagError(f"unknown shorthand flag: {arg[1:2]!r} in {arg[:60]}")
            raise FlagError(f'"kube-proxy" does not take any arguments, got ["{arg[:60]}"]')
        name, sep, text = arg[2:].partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            raise FlagError(f"unknown flag: --{name[:60]}")
        if not sep:
            if flag.kind == "bool":
                text = "true"
            elif i < len(args):
                text = args[i]
                i += 1
            else:
                raise FlagError(f"flag needs an argument: --{name}")
        value = _value(name, flag.kind, text)
        given[name] = value
        for path in flag.paths:
            _set(overlay, path, value)
    return overlay, given


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def is_logging_flag(name: str) -> bool:
    """component-base's logging flags, which kube-proxy applies over a --config file too."""
    return name in ("v", "vmodule", "logging-format", "log-flush-frequency") or name.startswith(("log-json-", "log-text-"))
