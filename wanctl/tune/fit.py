"""The memory model's coefficients, fitted from `wanctl.tune.measurements`: activations per
token of each DiT architecture (and how Ulysses splits them), per decoder pixel of each VAE's
decode, per frame pixel of the I2V encode, UMT5's, the allocator's reserve per phase, the CUDA
context and NCCL's buffers."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

from wanctl.core.settings import DTYPE_BYTES, GIB, PHASES
from wanctl.core.workload import Workload, decode_pixels
from wanctl.tune.measurements import MEASUREMENTS, Measurement


@dataclass(frozen=True)
class Coefficients:
    """What the model computes with, fitted from `MEASUREMENTS` by `fit`."""

    # by (decoder, VAE): bytes per rank pixel per dtype byte, per call and per latent frame
    decode: dict[tuple[str, str], tuple[float, float]]
    # by DiT architecture (`Family.dit_name`):
    dit_local: dict[str, float]  # bf16 activation bytes per token of this rank's share
    dit_global: dict[str, float]  # bf16 bytes per token of the whole sequence, every rank
    text_encode_gib: float  # UMT5-XXL activations at 512 tokens
    # by VAE: bytes per pixel of a frame the I2V encode holds beyond its clip
    image_encode: dict[str, float]
    # reserved / allocated activations by (phase, expandable segments, decoder, VAE, chunk_t):
    # for the decode, one per decoder, VAE and chunk_t measured, and ("", "", 0) over every
    # decode row; for the other phases ("", "", 0). Read them through `ratio`.
    reserved_ratio: dict[tuple[str, bool, str, str, int], float]
    context_gib: float
    nccl_gib: float
    expandable_measured: bool
    provenance: dict[str, str]

    def ratio(
        self, phase: str, expandable: bool, decoder: str = "", chunk_t: int = 0,
        vae: str = "wan2.2",
    ) -> float:  # fmt: skip
        """`_ratio`, but never below expandable segments' for the default allocator's decode
        (every measurement has it reserve more; a decoder measured with expandable segments
        alone would otherwise take another decoder's default ratio)."""
        if not expandable and phase == "decode":
            return max(self._ratio(phase, False, decoder, chunk_t, vae),
                       self._ratio(phase, True, decoder, chunk_t, vae))  # fmt: skip
        return self._ratio(phase, expandable, decoder, chunk_t, vae)

    def _ratio(self, phase: str, expandable: bool, decoder: str, chunk_t: int, vae: str) -> float:
        """The reserved ratio of a phase: for the decode, the decoder's with this VAE at the
        largest chunk_t measured up to `chunk_t` (the smallest measured if all are larger),
        else every decoder's; with the allocator setting asked, else with the default
        allocator (which reserves more); else the largest ratio measured."""
        for mode in (expandable, False):
            measured = sorted(
                k for p, e, d, v, k in self.reserved_ratio
                if (p, e, d, v) == (phase, mode, decoder, vae) and k
            )  # fmt: skip
            if phase == "decode" and measured:
                k = max((k for k in measured if k <= chunk_t), default=measured[0])
                return self.reserved_ratio[phase, mode, decoder, vae, k]
            if (phase, mode, "", "", 0) in self.reserved_ratio:
                return self.reserved_ratio[phase, mode, "", "", 0]
        return max(self.reserved_ratio.values())


def in_effect(rows: tuple[Measurement, ...]) -> tuple[Measurement, ...]:
    """The rows the fit uses: of rows of the same configuration (what, at which size, how,
    where, by which procedure), the last one, so that a re-run pasted below replaces it."""
    latest = {
        (m.phase, m.width, m.height, m.frames, m.ranks, m.chunk_t, m.dtype, m.expandable,
         m.decoder, m.method, m.device, m.source, m.model, m.placement): m
        for m in rows
    }  # fmt: skip
    return tuple(latest.values())


def _rows(
    phase: str, rows: tuple[Measurement, ...], method: str | None = None
) -> list[Measurement]:
    return [m for m in rows if m.phase == phase and (method is None or m.method == method)]


def _least_squares(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Intercept and slope of y = a + b x."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0
    return mean_y - slope * mean_x, slope


def _describe(rows: list[Measurement]) -> str:
    by = sorted({f"{m.method} on {m.device} ({m.versions}, {m.date}; {m.source})" for m in rows})
    return "; ".join(by)


def fit(rows: tuple[Measurement, ...] = MEASUREMENTS) -> Coefficients:
    """Fit the coefficients: GPU measurements where there are some, traces for the structure
    GPUs have not measured yet (how Ulysses splits the DiT's activations: traced on TI2V-5B,
    whose blocks the A14B experts share, and applied to both), per decoder and VAE, per DiT."""
    rows = tuple(m for m in in_effect(rows) if not m.held_out)
    decode_rows = {
        key: [m for m in _rows("decode", rows, "cuda") if _decoder(m) == key]
        or [m for m in _rows("decode", rows) if _decoder(m) == key]
        for key in sorted({_decoder(m) for m in _rows("decode", rows)})
    }
    decode = {key: _decode_fit(chosen) for key, chosen in decode_rows.items()}

    sampling = _rows("sampling", rows)
    traced = [m for m in sampling if m.method == "trace"]
    degrees = {m.ranks for m in traced}
    global_share = _global_share(traced) if 1 in degrees and len(degrees) > 1 else 0.0
    per_dit = _per_dit([m for m in sampling if m.method == "cuda"] or sampling)
    encode_rows = {
        vae: [m for m in _rows("image_encode", rows) if m.family.vae.name == vae]
        for vae in sorted({m.family.vae.name for m in _rows("image_encode", rows)})
    }

    text = _rows("text_encode", rows, "cuda") or _rows("text_encode", rows)
    with_reserved = [m for m in rows if m.reserved_gib is not None and m.phase in PHASES]
    measured_expandable = any(m.expandable for m in with_reserved)
    context, nccl = _rows("context", rows), _rows("nccl", rows)
    return Coefficients(
        decode=decode,
        dit_local={dit: value * (1 - global_share) for dit, (value, _) in per_dit.items()},
        dit_global={dit: value * global_share for dit, (value, _) in per_dit.items()},
        text_encode_gib=max(m.allocated_gib - m.weights_gib for m in text),
        image_encode={vae: _encode_fit(chosen) for vae, chosen in encode_rows.items()},
        reserved_ratio=_reserved_ratios(with_reserved),
        context_gib=max(m.allocated_gib for m in context),
        nccl_gib=max(m.allocated_gib for m in nccl),
        expandable_measured=measured_expandable,
        provenance={
            **{f"decode ({d}, {v})": _describe(chosen) for (d, v), chosen in decode_rows.items()},
            **{f"sampling ({dit})": _describe(chosen)
               + (f"; Ulysses split: {_describe(traced)}" if global_share else "")
               for dit, (_, chosen) in per_dit.items()},
            **{f"image_encode ({v})": _describe(chosen) for v, chosen in encode_rows.items()},
            "text_encode": _describe(text),
            "reserved_ratio": _describe(with_reserved)
            + "; per phase and allocator setting (the decode's per decoder, VAE and chunk_t), "
            "the ratio whose reserved figure errs least on the worst of its rows; a setting "
            "without a measurement of its own takes the default allocator's",
            "context": _describe(context) + "; the largest",
            "nccl": _describe(nccl),
        },
    )  # fmt: skip


def _decoder(m: Measurement) -> tuple[str, str]:
    return m.decoder, m.family.vae.name


def _per_dit(rows: list[Measurement]) -> dict[str, tuple[float, list[Measurement]]]:
    """Activation bytes per token of each DiT architecture, the mean over its one-rank rows
    (every row where none is single-rank), with the rows used."""
    result = {}
    for dit in sorted({m.family.dit_name for m in rows}):
        mine = [m for m in rows if m.family.dit_name == dit]
        single = [m for m in mine if m.ranks == 1] or mine
        per_token = [(m.allocated_gib - m.weights_gib) * GIB / tokens(m) for m in single]
        result[dit] = (sum(per_token) / len(per_token), single)
    return result


def _encode_fit(rows: list[Measurement]) -> float:
    """Bytes per frame pixel the I2V encode holds beyond its fp32 clip (the encoder runs over a
    few frames at a time, so its work grows with the frame's area, not the clip's length): the
    least-squares slope through the origin."""
    points = [
        (m.width * m.height, (m.allocated_gib - m.weights_gib) * GIB
         - 3 * m.frames * m.width * m.height * 4)
        for m in rows
    ]  # fmt: skip
    return sum(x * y for x, y in points) / sum(x * x for x, _ in points)


def _decode_fit(rows: list[Measurement]) -> tuple[float, float]:
    """Activation bytes per rank pixel per dtype byte = fixed + per_frame x chunk_t. Rows of a
    single chunk_t cannot say what a frame more per call costs: refused, never a free chunk."""
    if len({m.chunk_t for m in rows}) < 2:
        raise ValueError(
            f"the {rows[0].decoder} decode rows of the {rows[0].family.vae.name} VAE measure "
            f"chunk_t {rows[0].chunk_t} alone: the fit needs two chunk_t values "
            "(benchmarks/memory_model.py measures 1 and 2)"
        )
    return _least_squares([
        (float(m.chunk_t), (m.allocated_gib - m.weights_gib) * GIB
         / (decode_pixels(m.width, m.height, m.ranks, m.family.vae.spatial)
            * DTYPE_BYTES[m.dtype]))
        for m in rows
    ])  # fmt: skip


def _reserved_ratios(rows: list[Measurement]) -> dict[tuple[str, bool, str, str, int], float]:
    """Reserved over allocated activations for each phase and allocator setting, and for the
    decode each decoder, VAE and chunk_t too: the ratio r that minimises the largest relative
    error of `weights + r x activations` against the measured reserved figures of its rows."""
    groups: dict[tuple[str, bool, str, str, int], list[Measurement]] = {}
    for m in rows:
        groups.setdefault((m.phase, m.expandable, "", "", 0), []).append(m)
        if m.phase == "decode":
            key = (m.phase, m.expandable, m.decoder, m.family.vae.name, m.chunk_t)
            groups.setdefault(key, []).append(m)
    return {key: _minimax_ratio(group) for key, group in groups.items()}


def _minimax_ratio(rows: list[Measurement]) -> float:
    """The r minimising max |(w + r a) / R - 1| over rows of weights w, activations a and
    reserved R. Each error grows with r, so the optimum is where the largest error above
    equals the largest below: the best of the pairwise crossings (or a row's exact ratio)."""
    points = [(m.weights_gib, m.allocated_gib - m.weights_gib, m.reserved_gib or 0.0) for m in rows]

    def worst(r: float) -> float:
        return max(abs((w + r * a) / reserved - 1) for w, a, reserved in points)

    candidates = [(reserved - w) / a for w, a, reserved in points]
    candidates += [
        (2 - w1 / r1 - w2 / r2) / (a1 / r1 + a2 / r2)
        for (w1, a1, r1), (w2, a2, r2) in itertools.combinations(points, 2)
    ]
    return min(candidates, key=worst)


def _global_share(traced: list[Measurement]) -> float:
    """The share of the DiT's activations every rank computes over the whole sequence, from
    traces at several Ulysses degrees: act(N) / act(1) = (1 - share) / N + share, with the
    activations per token of the whole sequence averaged over the traces of each degree."""
    per_token: dict[int, list[float]] = {}
    for m in traced:
        per_token.setdefault(m.ranks, []).append((m.allocated_gib - m.weights_gib) / tokens(m))
    mean = {n: sum(values) / len(values) for n, values in per_token.items()}
    # act(N)/act(1) - 1/N = share * (1 - 1/N): least squares through the origin.
    points = [(1 - 1 / n, act / mean[1] - 1 / n) for n, act in mean.items() if n > 1]
    return sum(x * y for x, y in points) / sum(x * x for x, _ in points)


@cache
def coefficients() -> Coefficients:
    return fit()


def tokens(m: Measurement) -> int:
    return Workload(m.width, m.height, m.frames, 1, family=m.family).tokens
