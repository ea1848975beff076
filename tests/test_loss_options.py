"""check_options: every entry point of the loss refuses out-of-range options the same way,
naming the argument; meta tensors get an error that says what is wrong."""

import math

import pytest
import torch

from hycon_ext import HyConLoss, HyConTerms, hycon_loss, hycon_terms, pairs, terms_to_output
from hycon_ext.distributed import hycon_loss_distributed
from hycon_ext.loss import check_options

NAN, INF = math.nan, math.inf
BAD = [
    (dict(alpha=NAN), "alpha: expected a number in \\(0, 1\\]"),
    (dict(alpha=-5.0), "alpha: expected a number in \\(0, 1\\]"),
    (dict(alpha=0.0), "alpha: expected"),
    (dict(alpha=1.5), "alpha: expected"),
    (dict(alpha=INF), "alpha: expected"),
    (dict(beta=NAN), "beta: expected a number in \\(0, 1\\]"),
    (dict(beta=0.0), "beta: expected"),
    (dict(beta=1.01), "beta: expected"),
    (dict(gamma=NAN), "gamma: expected a number > 0 and finite"),
    (dict(gamma=INF), "gamma: expected"),
    (dict(gamma=0.0), "gamma: expected"),
    (dict(lambdas=(1.0, NAN, 1.0)), "lambdas: expected three finite numbers >= 0"),
    (dict(lambdas=(INF, 1.0, 1.0)), "lambdas: expected three finite numbers >= 0"),
    (dict(lambdas=(1.0, 1.0, -0.5)), "lambdas: expected three finite numbers >= 0"),
]


def _batch(k=4, d=3):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(k, d, generator=g, dtype=torch.float64) for _ in range(3)]
    return (*xs, torch.tensor([0, 1, 0, 1])[:k])


@pytest.mark.parametrize("options, match", BAD)
def test_every_entry_point_refuses_out_of_range_options(options, match):
    batch = _batch()
    with pytest.raises(ValueError, match=match):
        check_options(**options)
    with pytest.raises(ValueError, match=match):
        hycon_loss(*batch, backend="reference", **options)
    with pytest.raises(ValueError, match=match):
        HyConLoss(**options)
    with pytest.raises(ValueError, match=match):  # outside a process group it is hycon_loss
        hycon_loss_distributed(*batch, backend="reference", **options)
    if "lambdas" in options:
        with pytest.raises(ValueError, match=match):
            terms_to_output(HyConTerms(torch.ones(3), torch.ones(3)), options["lambdas"])
    else:
        z = torch.softmax(torch.cat(batch[:3]), -1)
        ids = pairs.row_descriptors(batch[3], 3)
        with pytest.raises(ValueError, match=match):
            hycon_terms(z, z, ids, ids, n_samples=4, backend="reference", **options)


def test_the_distributed_loss_checks_its_options_once_outside_a_process_group(monkeypatch):
    import hycon_ext.distributed
    import hycon_ext.loss

    assert not torch.distributed.is_initialized()
    calls = []

    def counting_check(**options):
        calls.append(options)
        check_options(**options)

    monkeypatch.setattr(hycon_ext.loss, "check_options", counting_check)
    monkeypatch.setattr(hycon_ext.distributed, "check_options", counting_check)
    out = hycon_loss_distributed(*_batch(), backend="reference", alpha=0.5)
    assert len(calls) == 1 and calls[0]["alpha"] == 0.5, calls
    expected = hycon_loss(*_batch(), backend="reference", alpha=0.5)
    assert torch.equal(out.total, expected.total)


@pytest.mark.parametrize("options, match", BAD)
def test_the_distributed_loss_refuses_bad_options_before_any_collective(
    monkeypatch, options, match
):
    # A process group as the loss sees it, whose every collective or group query fails the test:
    # the options must be refused before the first one.
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)

    def collective(*args, **kwargs):
        raise AssertionError("a collective ran before the option check")

    for name in ("all_gather", "all_reduce", "get_world_size", "get_rank"):
        monkeypatch.setattr(dist, name, collective)
    with pytest.raises(ValueError, match=match):
        hycon_loss_distributed(*_batch(), backend="reference", **options)


@pytest.mark.parametrize(
    "options",
    [
        dict(alpha=1.0),
        dict(alpha=1e-6),
        dict(beta=1.0),
        dict(gamma=1e-3),
        dict(lambdas=(0.0, 0.0, 0.0)),
        dict(lambdas=(2, 0, 3)),
    ],
)
def test_the_range_ends_that_belong_to_the_range_are_accepted(options):
    check_options(**options)
    out = hycon_loss(*_batch(), backend="reference", **options)
    assert torch.isfinite(out.total)


def test_meta_inputs_are_refused_naming_the_argument():
    x_l, x_a, x_v, labels = _batch()
    meta = [x.to("meta") for x in (x_l, x_a, x_v)]
    for backend in ("reference", "auto", "ext"):
        with pytest.raises(
            ValueError, match="x_l: meta tensors are not supported by the eager loss"
        ):
            hycon_loss(*meta, labels, backend=backend)
    with pytest.raises(ValueError, match="labels: meta tensors are not supported"):
        hycon_loss(x_l, x_a, x_v, labels.to("meta"), backend="reference")
    with pytest.raises(ValueError, match="labels: meta tensors"):
        hycon_loss_distributed(x_l, x_a, x_v, labels.to("meta"), backend="reference")
    z = torch.softmax(torch.cat(meta), -1)
    ids = pairs.row_descriptors(labels, 3).to("meta")
    with pytest.raises(ValueError, match="z_anchor: meta tensors"):
        hycon_terms(z, z, ids, ids, n_samples=4, backend="reference")
