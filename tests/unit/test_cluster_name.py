"""What cluster an agent says its records come from, where the node tells."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.host import cluster_name

KUBELET_CONF = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://10.0.0.1:6443
  name: prod-eu-1
- cluster:
    server: https://10.0.0.2:6443
  name: staging
contexts:
- context:
    cluster: prod-eu-1
    user: system:node:node-a
  name: system:node:node-a@prod-eu-1
current-context: system:node:node-a@prod-eu-1
users: []
"""


def test_the_environment_comes_first(tmp_path: Path) -> None:
    conf = tmp_path / "kubelet.conf"
    conf.write_text(KUBELET_CONF)
    assert cluster_name({"OOMTRACE_CLUSTER": "from-env"}, (conf,)) == "from-env"


def test_the_kubelet_kubeconfig_current_context_names_the_cluster(tmp_path: Path) -> None:
    conf = tmp_path / "kubelet.conf"
    conf.write_text(KUBELET_CONF)
    assert cluster_name({}, (tmp_path / "missing", conf)) == "prod-eu-1"


def test_a_kubeconfig_with_one_cluster_and_no_context_names_it(tmp_path: Path) -> None:
    conf = tmp_path / "kubeconfig"
    conf.write_text("clusters:\n- name: edge-7\n  cluster: {server: https://x}\n")
    assert cluster_name({}, (conf,)) == "edge-7"


def test_nothing_known_or_garbage_is_no_cluster(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\xff\x00: [unclosed\n" * 100)
    listy = tmp_path / "listy"
    listy.write_text("- a\n- b\n")
    odd = tmp_path / "odd"
    odd.write_text("current-context: 7\ncontexts: {a: b}\nclusters: [1, 2]\n")
    assert cluster_name({}, (garbage, listy, odd, tmp_path / "missing")) == ""


def test_a_long_name_is_cut() -> None:
    assert len(cluster_name({"OOMTRACE_CLUSTER": "c" * 10_000}, ())) == 253
