"""The embedded model's prior over clean latents and its exact flow-matching denoiser.

Prior: a mixture over scenes (tempo, metre, mode, tonic), each a product of independent factors
(a chord per bar, a lead note per beat, a drum pattern per bar), each factor-segment a mixture of
isotropic Gaussians ``N(pattern_o, sigma^2 I)`` around its options; coordinates no factor covers
are ``N(0, sigma^2)``. Some coordinates may be fixed by the task (kept source) and may inform the
scene and the options as observed data; free coordinates may sit on a ``base`` (lego/complete add
onto the source).

With ``x_t = t * eps + a * x0`` (``a = 1 - t``) every component gives ``x_t ~ N(a * mu, var_t I)``,
``var_t = a^2 sigma^2 + t^2``, and ``E[x0 | x_t, component] = mu + c (x_t - a mu)``,
``c = a sigma^2 / var_t``. The posterior over components factorises over (factor, segment) within
a scene, so the exact posterior mean costs a few einsums: no sampling, no approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prefect_acestep.stages.backends.embedded.channels import PITCH_CLASSES
from prefect_acestep.stages.backends.embedded.factors import Factor
from prefect_acestep.stages.geometry import LATENT_DIM


@dataclass(frozen=True)
class Scene:
    """Factors shared by the tonics of one (timing, mode); a tonic transposes the pitched factors."""

    factors: tuple[Factor, ...]
    tonics: tuple[int, ...]
    log_weights: tuple[float, ...]
    """Log prior of (this scene, tonic) for each tonic; summed over all scenes they normalise."""


@dataclass(frozen=True)
class Observation:
    """What the task fixes: ``free`` ``[B, T, 64]`` (bool) coordinates are generated on top of
    ``base``; the others equal ``fixed``; ``evidence`` (bool, or None) marks the fixed coordinates
    that are data the scene model explains (the source parts that are present)."""

    free: torch.Tensor
    base: torch.Tensor
    fixed: torch.Tensor
    evidence: torch.Tensor | None


def _channel_index(factor: Factor, tonics: tuple[int, ...]) -> torch.Tensor:
    """``[K, C]`` absolute channel of each factor channel under each tonic (``K = 1`` if fixed)."""
    channels = factor.channels
    if not factor.transposes:
        return channels[None]
    shift = torch.tensor(tonics, dtype=torch.long)[:, None]
    register, pitch_class = channels // PITCH_CLASSES, channels % PITCH_CLASSES
    return register * PITCH_CLASSES + (pitch_class + shift) % PITCH_CLASSES


@dataclass(frozen=True)
class _Inputs:
    """One model call's data, as every group reads it."""

    y: torch.Tensor  # [B, T, 64] free coordinates minus a * base; zero elsewhere
    free: torch.Tensor  # [B, T, 64] 0/1 in y's dtype
    all_free: bool
    fixed_seen: torch.Tensor | None  # [B, T, 64] fixed values where they are evidence, else 0
    seen: torch.Tensor | None  # [B, T, 64] evidence mask 0/1
    a: torch.Tensor  # [B, 1, 1, 1] float64
    var: torch.Tensor  # [B, 1, 1, 1] float64
    sigma: float


class _Group:
    """Factors of several scenes that read the same channels under the same tonics, stacked along
    the option axis so that few tensor operations score all of them (scenes differ in timing and
    mode, not in which channels their parts play). Subclasses say how options are scored."""

    def __init__(self, index: torch.Tensor, members: list[tuple[int, Factor]], slots: list[range]) -> None:
        self.index = index
        self.members = members
        counts = {f.log_weights.shape[1] for _, f in members}
        if len(counts) != 1:
            raise ValueError(f"factors grouped together must have as many options each, got {sorted(counts)}")
        self.option_count = counts.pop()
        self.options = self.option_count * len(members)
        self.slices = [slice(m * self.option_count, (m + 1) * self.option_count) for m in range(len(members))]
        self.max_segments = max(f.segments for _, f in members)
        weights = torch.zeros(self.options, self.max_segments, dtype=torch.float64)
        real = torch.zeros(len(members), self.max_segments, dtype=torch.float64)
        for m, ((_, f), rows) in enumerate(zip(members, self.slices)):
            weights[rows, : f.segments] = f.log_weights.T
            real[m, : f.segments] = 1.0
        self.log_weight_rows = weights  # [sum O, S]; segments past a member's own count stay empty
        self.real_segments = real  # [M, S]
        # Pairs (member, tonic row of this group, slot of the (scene, tonic) it adds to): a group over
        # K tonics feeds tonic k of its member's scene; a key-free group (K = 1) feeds all of them.
        members, ks, targets = [], [], []
        for m, (position, _) in enumerate(self.members):
            for k, slot in enumerate(slots[position]):
                members.append(m)
                ks.append(k if self.index.shape[0] > 1 else 0)
                targets.append(slot)
        self.pair_member, self.pair_k, self.pair_slot = (torch.tensor(v) for v in (members, ks, targets))

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, T, 64]`` -> ``[B, K, T, C]``: the group's channels as each tonic reads them."""
        k, c = self.index.shape
        batch, frames, _ = values.shape
        return values[:, :, self.index.reshape(-1)].view(batch, frames, k, c).permute(0, 2, 1, 3)

    def scores(self, inputs: _Inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flow log-likelihood and evidence log-likelihood of every option in every segment,
        ``[B, K, sum O, S]`` float64 (evidence None when the task observes nothing)."""
        raise NotImplementedError

    def expected(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_o weights[b, k, o, segment(t)] * pattern_o[t, c]`` as ``[B, T, K, C]``."""
        raise NotImplementedError


class _PatternGroup(_Group):
    """Options as full patterns: one einsum per term over options and frames."""

    def __init__(self, index: torch.Tensor, members: list[tuple[int, Factor]], slots: list[range]) -> None:
        super().__init__(index, members, slots)
        self.patterns = torch.cat([f.patterns for _, f in members], dim=1)  # [Bp, sum O, T, C]
        self.energy = (self.patterns * self.patterns).sum(dim=3)  # [Bp, sum O, T]: every coordinate free
        self.segment_rows = torch.cat(
            [f.segment.expand(rows.stop - rows.start, -1) for (_, f), rows in zip(members, self.slices)]
        )  # [sum O, T]
        # A segment's sum is a difference of cumulative sums at its ends (empty: end = start).
        frames = self.segment_rows.shape[1]
        ends = torch.full((self.options, self.max_segments), frames, dtype=torch.long)
        for (_, f), rows in zip(members, self.slices):
            ends[rows, : f.segments] = torch.searchsorted(f.segment, torch.arange(f.segments), right=True)
        self.segment_ends = ends
        self.segment_starts = torch.cat([torch.zeros(self.options, 1, dtype=torch.long), ends[:, :-1]], dim=1)

    def _by_segment(self, per_frame: torch.Tensor) -> torch.Tensor:
        cumulative = torch.nn.functional.pad(per_frame.to(torch.float64).cumsum(dim=3), (1, 0))
        shape = (*per_frame.shape[:3], self.max_segments)
        ends = cumulative.gather(3, self.segment_ends.expand(shape))
        return ends - cumulative.gather(3, self.segment_starts.expand(shape))

    def _project(self, values: torch.Tensor, squared: bool = False) -> torch.Tensor:
        patterns = self.patterns.to(values.dtype)
        if squared:
            patterns = patterns * patterns
        if patterns.shape[0] == 1:
            return torch.einsum("bktc,otc->bkot", values, patterns[0])
        return torch.einsum("bktc,botc->bkot", values, patterns)

    def scores(self, inputs: _Inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        cross = self._project(self.gather(inputs.y))
        if inputs.all_free:
            energy = self.energy.to(cross.dtype)[:, None]
        else:
            energy = self._project(self.gather(inputs.free), squared=True)
        a, var = inputs.a.to(cross.dtype), inputs.var.to(cross.dtype)
        flow = self._by_segment((a * cross - 0.5 * a * a * energy) / var)
        if inputs.seen is None:
            return flow, None
        seen = self._project(self.gather(inputs.fixed_seen))
        seen_energy = self._project(self.gather(inputs.seen), squared=True)
        return flow, self._by_segment((seen - 0.5 * seen_energy) / inputs.sigma**2)

    def expected(self, weights: torch.Tensor) -> torch.Tensor:
        batch, k = weights.shape[:2]
        per_frame = weights.gather(3, self.segment_rows.expand(batch, k, -1, -1))  # [B, K, sum O, T]
        patterns = self.patterns.to(weights.dtype)
        if patterns.shape[0] == 1:
            return torch.einsum("bkot,otc->btkc", per_frame, patterns[0])
        return torch.einsum("bkot,botc->btkc", per_frame, patterns)


@dataclass(frozen=True)
class _Timing:
    """Envelopes and segments shared by the separable factors of one timing, and where their
    (envelope, segment) columns start in the group's column axis."""

    envelopes: torch.Tensor  # [E, T] float64
    segment: torch.Tensor  # [T]
    starts: torch.Tensor  # [S] first frame of each segment
    ends: torch.Tensor  # [S] one past its last frame
    offset: int

    @property
    def width(self) -> int:
        return self.envelopes.shape[0] * self.starts.shape[0]


class _SeparableGroup(_Group):
    """Options as envelope x vector (see factors.Separable): ``x`` is projected once onto each
    distinct vector; the sums over each segment under each envelope are then cumulative sums per
    timing, shared by every scene of that timing (major and minor, all tonics)."""

    def __init__(self, index: torch.Tensor, members: list[tuple[int, Factor]], slots: list[range]) -> None:
        super().__init__(index, members, slots)
        parts = [f.separable for _, f in members]
        assert all(p is not None for p in parts)
        vectors, vector_ids = torch.unique(torch.cat([p.vectors for p in parts]), dim=0, return_inverse=True)
        self.vectors = vectors  # [D, C]
        self.timings: dict[object, _Timing] = {}
        rows = torch.empty(self.options, dtype=torch.long)
        cols = torch.empty(self.options, self.max_segments, dtype=torch.long)
        offset, width = 0, 0
        for (_, factor), part, sl in zip(members, parts, self.slices):
            if part.timing not in self.timings:
                ends = torch.searchsorted(factor.segment, torch.arange(factor.segments), right=True)
                starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
                timing = _Timing(part.envelopes.to(torch.float64), factor.segment, starts, ends, width)
                self.timings[part.timing] = timing
                width += timing.width
            base = self.timings[part.timing].offset
            segments = torch.arange(self.max_segments)
            real = base + part.envelope_of[:, None] * factor.segments + segments[None, :]
            rows[sl] = vector_ids[offset + part.vector_of]
            cols[sl] = torch.where(segments[None, :] < factor.segments, real, -1)
            offset += part.vectors.shape[0]
        cols[cols < 0] = width  # padding segments read column J, which stays zero
        self.width = width + 1
        self.rows, self.cols = rows, cols
        self.flat = (rows[:, None] * self.width + cols).reshape(-1)
        column_energy = torch.zeros(self.width, dtype=torch.float64)
        for timing in self.timings.values():
            column_energy[timing.offset : timing.offset + timing.width] = self._by_segment(
                timing.envelopes * timing.envelopes, timing
            ).reshape(-1)
        norms = (vectors * vectors).sum(dim=1).to(torch.float64)
        self.energy = norms[rows][:, None] * column_energy[cols]  # [sum O, S]: every coordinate free

    @staticmethod
    def _by_segment(per_frame: torch.Tensor, timing: _Timing) -> torch.Tensor:
        """``[..., T]`` -> ``[..., S]`` sums over the timing's segments."""
        cumulative = torch.nn.functional.pad(per_frame.cumsum(dim=-1), (1, 0))
        return cumulative[..., timing.ends] - cumulative[..., timing.starts]

    def _segment_sums(self, values: torch.Tensor, vectors: torch.Tensor, squared: bool) -> torch.Tensor:
        """``sum_{t in s} env_e(t)^(1 or 2) <values_t, vector_d>`` for every option's (d, e, s)."""
        per_vector = torch.einsum("bktc,dc->bkdt", values, vectors.to(values.dtype)).to(torch.float64)
        out = per_vector.new_zeros(*per_vector.shape[:3], self.width)
        for timing in self.timings.values():
            envelopes = timing.envelopes * timing.envelopes if squared else timing.envelopes
            sums = self._by_segment(per_vector[:, :, :, None, :] * envelopes, timing)  # [B, K, D, E, S]
            out[..., timing.offset : timing.offset + timing.width] = sums.flatten(start_dim=3)
        return out[:, :, self.rows[:, None], self.cols]

    def scores(self, inputs: _Inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        cross = self._segment_sums(self.gather(inputs.y), self.vectors, squared=False)
        if inputs.all_free:
            energy = self.energy
        else:
            energy = self._segment_sums(self.gather(inputs.free), self.vectors * self.vectors, squared=True)
        flow = (inputs.a * cross - 0.5 * inputs.a * inputs.a * energy) / inputs.var
        if inputs.seen is None:
            return flow, None
        seen = self._segment_sums(self.gather(inputs.fixed_seen), self.vectors, squared=False)
        seen_energy = self._segment_sums(self.gather(inputs.seen), self.vectors * self.vectors, squared=True)
        return flow, (seen - 0.5 * seen_energy) / inputs.sigma**2

    def expected(self, weights: torch.Tensor) -> torch.Tensor:
        batch, k = weights.shape[:2]
        d = self.vectors.shape[0]
        spread = weights.new_zeros(batch * k, d * self.width, dtype=torch.float64)
        spread.index_add_(1, self.flat, weights.reshape(batch * k, -1).to(torch.float64))
        spread = spread.view(batch, k, d, self.width)
        per_vector = None
        for timing in self.timings.values():
            count = timing.starts.shape[0]
            block = spread[..., timing.offset : timing.offset + timing.width].unflatten(3, (-1, count))  # B,K,D,E,S
            contribution = (block[..., timing.segment] * timing.envelopes).sum(dim=3)  # [B, K, D, T]
            per_vector = contribution if per_vector is None else per_vector + contribution
        return torch.einsum("bkdt,dc->btkc", per_vector.to(weights.dtype), self.vectors.to(weights.dtype))


class ScenePrior:
    """Exact posterior mean and log density of ``x_t`` under a mixture of scenes."""

    def __init__(self, scenes: list[Scene], sigma: float) -> None:
        if not scenes:
            raise ValueError("a prior needs at least one scene")
        self.scenes = scenes
        self.sigma = sigma
        grouped: dict[tuple, list[tuple[int, Factor]]] = {}
        indices: dict[tuple, torch.Tensor] = {}
        for position, scene in enumerate(scenes):
            for factor in scene.factors:
                index = _channel_index(factor, scene.tonics)
                kind = factor.separable is not None
                key = (tuple(index.reshape(-1).tolist()), index.shape, factor.patterns.shape[0], kind)
                grouped.setdefault(key, []).append((position, factor))
                indices[key] = index
        slots, start = [], 0
        for scene in scenes:
            slots.append(range(start, start + len(scene.tonics)))
            start += len(scene.tonics)
        self.groups: list[_Group] = [
            (_SeparableGroup if key[3] else _PatternGroup)(indices[key], members, slots)
            for key, members in grouped.items()
        ]
        self.slot_weights = torch.tensor([w for scene in scenes for w in scene.log_weights], dtype=torch.float64)

    def _scores(self, x_t: torch.Tensor, t: torch.Tensor, obs: Observation):
        """Per group the option logits ``[B, K, sum O, S]`` and their log-sum-exp per member and
        segment; per (scene, tonic) slot the log joint with and without the flow term ``[B, slots]``."""
        batch = x_t.shape[0]
        a = (1.0 - t).to(torch.float64).view(-1, 1, 1, 1)
        var = a * a * self.sigma**2 + t.to(torch.float64).view(-1, 1, 1, 1) ** 2
        a_x = a.to(x_t.dtype).view(-1, 1, 1)
        y = torch.where(obs.free, x_t - a_x * obs.base.to(x_t.dtype), torch.zeros_like(x_t))
        seen = None if obs.evidence is None else obs.evidence.to(x_t.dtype)
        inputs = _Inputs(
            y=y,
            free=obs.free.to(x_t.dtype),
            all_free=bool(obs.free.all()),
            fixed_seen=None if seen is None else obs.fixed.to(x_t.dtype) * seen,
            seen=seen,
            a=a,
            var=var,
            sigma=self.sigma,
        )
        slot_logits = self.slot_weights[None].repeat(batch, 1)  # [B, scene-tonic slots]
        slot_prior = slot_logits.clone()
        group_logits = []
        for group in self.groups:
            flow, evidence = group.scores(inputs)
            k, m = flow.shape[1], len(group.members)
            prior = group.log_weight_rows.expand(batch, k, -1, -1)
            if evidence is not None:
                prior = prior + evidence
            logits = prior + flow
            shape = (batch, k, m, group.option_count, group.max_segments)
            lse = torch.logsumexp(logits.view(shape), dim=3)  # [B, K, M, S]
            lse_prior = torch.logsumexp(prior.reshape(shape), dim=3)
            for total, target in ((lse, slot_logits), (lse_prior, slot_prior)):
                per_member = (total * group.real_segments).sum(dim=3)  # [B, K, M]
                target.index_add_(1, group.pair_slot, per_member[:, group.pair_k, group.pair_member])
            group_logits.append((logits, lse))
        return a, var, y, slot_logits, slot_prior, group_logits

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, obs: Observation) -> torch.Tensor:
        """``E[x0 | x_t]`` ``[B, T, 64]`` in ``x_t``'s dtype."""
        a, var, y, slot_logits, _, group_logits = self._scores(x_t, t, obs)
        resp = torch.softmax(slot_logits, dim=1)  # P(scene, tonic | x_t)
        batch, frames, _ = x_t.shape
        mean = x_t.new_zeros(batch, frames, LATENT_DIM)
        for group, (logits, lse) in zip(self.groups, group_logits):
            k, c = group.index.shape
            m = len(group.members)
            scene = resp.new_zeros(batch, m * k)
            scene.index_add_(1, group.pair_member * k + group.pair_k, resp[:, group.pair_slot])
            scene = scene.view(batch, m, k).permute(0, 2, 1)[:, :, :, None, None]  # [B, K, M, 1, 1]
            option = torch.exp(logits.view(batch, k, m, group.option_count, -1) - lse[:, :, :, None, :])
            weights = (option * scene).view(batch, k, group.options, -1).to(x_t.dtype)  # [B, K, sum O, S]
            mean.index_add_(2, group.index.reshape(-1), group.expected(weights).reshape(batch, frames, k * c))
        shrink = (a * self.sigma**2 / var).to(x_t.dtype).view(-1, 1, 1)  # c = a sigma^2 / var_t
        a_x = a.to(x_t.dtype).view(-1, 1, 1)
        generated = obs.base.to(x_t.dtype) + shrink * y + (1 - a_x * shrink) * mean
        return torch.where(obs.free, generated, obs.fixed.to(x_t.dtype))

    def log_density(self, x_t: torch.Tensor, t: torch.Tensor, obs: Observation) -> torch.Tensor:
        """``log p_t(x_t)`` ``[B]`` (float64), normalising constants included: the exact marginal
        whose score the posterior mean is (Tweedie), used to check the denoiser."""
        a, var, y, slot_logits, slot_prior, _ = self._scores(x_t, t, obs)
        free = obs.free.to(torch.float64)
        var_b = var.view(-1, 1, 1)
        y64 = y.to(torch.float64)
        gaussian = -0.5 * (y64 * y64 / var_b + torch.log(2 * math.pi * var_b)) * free
        t64 = t.to(torch.float64).view(-1, 1, 1)
        kept = x_t.to(torch.float64) - a.view(-1, 1, 1) * obs.fixed.to(torch.float64)
        fixed = -0.5 * (kept * kept / t64**2 + torch.log(2 * math.pi * t64**2)) * (1 - free)
        mixture = torch.logsumexp(slot_logits, dim=1)
        normaliser = torch.logsumexp(slot_prior, dim=1)
        return gaussian.sum(dim=(1, 2)) + fixed.sum(dim=(1, 2)) + mixture - normaliser
