"""The policy book (what a component knows of policies and namespaces) and the quota queues. Pure."""

import pytest
from expbuild_isolation.api.task import ExecutionTask
from expbuild_isolation.kube.policy import PolicyBook, UnknownNamespace
from expbuild_isolation.kube.quota import Quotas


def policy_body(name, **spec):
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy", "metadata": {"name": name},
            "spec": spec}


def namespace(name, **labels):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def task(namespace="ci", **spec):
    return ExecutionTask.model_validate({"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
                                         "metadata": {"name": "t", "namespace": namespace},
                                         "spec": {"command": ["true"], **spec}})


def test_the_book_judges_by_the_labels_of_the_task_namespace():
    book = PolicyBook([policy_body("teams", namespaceSelector={"matchLabels": {"tenant": "yes"}},
                                   isolation={"minimum": "VM"})],
                      [namespace("ci", tenant="yes"), namespace("free")])
    assert [v.policy for v in book.judge(task("ci")).violations] == ["teams"]
    assert book.judge(task("free")).allowed
    book.set_namespace(namespace("free", tenant="yes"))  # relabelled: now governed
    assert not book.judge(task("free")).allowed
    book.drop_policy("teams")
    assert book.judge(task("ci")).allowed


def test_a_task_of_an_unseen_namespace_cannot_be_judged():
    with pytest.raises(UnknownNamespace, match="'new'"):
        PolicyBook([], [namespace("ci")]).judge(task("new"))


def test_a_broken_policy_refuses_the_tasks_it_may_govern_and_no_others():
    broken = policy_body("typo", namespaceSelector={"matchLabels": {"tenant": "yes"}},
                         network={"restrictedCidrs": ["10.0.0.300/8"]})  # the schema's pattern lets this through
    book = PolicyBook([broken], [namespace("ci", tenant="yes"), namespace("free")])
    refused = book.judge(task("ci"))
    assert [(v.field, v.policy) for v in refused.violations] == [("metadata.namespace", "typo")]
    assert "invalid" in refused.refusal() and "restrictedCidrs" in refused.refusal()
    assert book.judge(task("free")).allowed
    unreadable = PolicyBook([policy_body("worse", namespaceSelector={"matchLabels": "x"})], [namespace("free")])
    assert not unreadable.judge(task("free")).allowed  # not even its selector can be read: it may govern any


def test_the_quota_of_a_namespace_is_the_smallest_of_its_policies():
    book = PolicyBook([policy_body("a", maxUnfinishedTasks=5), policy_body("b", maxUnfinishedTasks=2,
                                                                         namespaceSelector={"matchLabels": {"x": "1"}})],
                      [namespace("ci", x="1"), namespace("other")])
    assert (book.quota("ci").value, book.quota("ci").policy) == (2, "b")
    assert book.quota("other").value == 5
    assert book.quota("unseen") is None


def order(i):
    return (f"2025-03-01T12:00:{i:02d}Z", f"t{i}")


def test_tasks_beyond_the_quota_wait_and_start_oldest_first():
    quotas = Quotas()
    assert quotas.try_start("ci/t5", order(5), 2) and quotas.try_start("ci/t9", order(9), 2)
    for i in (8, 3, 7):  # arriving out of order
        assert not quotas.try_start(f"ci/t{i}", order(i), 2)
    assert quotas.waiting("ci") == ["ci/t3", "ci/t7", "ci/t8"]
    assert quotas.next_up("ci", 2) == []  # no slot free
    assert quotas.gone("ci/t5")
    assert quotas.next_up("ci", 2) == ["ci/t3"]
    assert not quotas.try_start("ci/t7", order(7), 2), "t7 may not overtake t3"
    assert quotas.try_start("ci/t3", order(3), 2)
    assert quotas.holding("ci") == 2 and quotas.waiting("ci") == ["ci/t7", "ci/t8"]
    assert not quotas.try_start("ci/t1", order(1), 2)  # older, but nothing is free: it waits first in line
    assert quotas.waiting("ci")[0] == "ci/t1"


def test_quotas_are_per_namespace_and_a_raised_quota_lets_more_start():
    quotas = Quotas()
    assert quotas.try_start("a/t1", order(1), 1)
    assert not quotas.try_start("a/t2", order(2), 1)
    assert quotas.try_start("b/t3", order(3), 1)
    assert quotas.next_up("a", 3) == ["a/t2"]
    assert quotas.next_up("a", None) == ["a/t2"]
    assert not quotas.gone("a/t2") and quotas.waiting("a") == []  # a waiting task deleted frees nothing
