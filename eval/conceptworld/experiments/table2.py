"""`sauce-jax experiment table2`: the paper's Table 2 on ConceptWorld, SAUCE against GA, GD, KL and PO.

Rows: the clean model, SAUCE's SAE alone (`SAUCE SAE only`: reconstruct at gamma 1, nothing
edited, what the SAE costs by itself), the four weight-update baselines (`sauce_jax.eval.baselines`), SAUCE
`reconstruct` (the paper's intervention; eq. 4 top-k and one gamma chosen on validation: the
pre-declared SAUCE row), the paper's exact recipe as its own row (`SAUCE paper recipe`: ReLU-L1
x64 SAE on the last token of hidden state -2, gamma -0.5, only k chosen), SAUCE `delta` as a
variant, and the controls. Every row is scored by the same `Evaluation` on the same test images.

Matched tuning: the baselines' forget set is the same train-split positives SAUCE selects on;
every tuned method gets a grid of the same size (4 learning rates x 3 step counts, 4 k x 3
gamma: 12 configurations), moved off an edge once (`tuning.search`), scored by the same declared
objective (`DemoConfig.objective`: by default `sauce.compensatory_objective`, half forgetting, half
retention, selectivity and utility; or `sauce.selective_objective`) on the validation split, never
on test. Each finished row is written to
`rows/<name>.json` at once and a rerun skips it; at the end `results.json`, `table2.md` (Table 2,
per-concept rates, losses, Table 3 descriptions) and `table2.png` are written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sauce_jax.errors import ConfigError
from sauce_jax.scoring import control_sets

from ..benchmark import Evaluation, Model, example_indices, headline, make_suite, task_table
from ..sauce import (
    MODES,
    QUICK_SAE_STEPS,
    SAE_ONLY,
    DemoConfig,
    choose_hyperparameters,
    grid_objective,
    sae_only,
    select_all,
    train_concept_sae,
    validation_suite,
)
from ..controls import mean_results, positives_mean
from ..runs import cached, same_config
from .selective import (
    PER_CONCEPT,
    PER_CONCEPT_CANDIDATES,
    PER_CONCEPT_CONTROL,
    check_candidates,
    check_variants,
    per_concept_rows,
    row_name,
    variant_row,
)
from ..tuning import Axis, label, search
from ..world import DOMAIN_OF


# SAUCE's side of the matched budget: 4 k x 3 gamma = 12 configurations, moved off an edge once.
TUNED_DEMO = DemoConfig(k_grid=(8, 16, 32, 64), gamma_grid=(-0.5, -1.0, -2.0), grid_moves=1)


@dataclasses.dataclass(frozen=True)
class Table2Config:
    """The experiment. `demo` sets the concepts, the seed, SAUCE's SAE / selection / grid and the
    validation and test sizes every row shares; the rest configures the baselines."""

    demo: DemoConfig = dataclasses.field(default_factory=lambda: TUNED_DEMO)
    methods: tuple[str, ...] = ("GA", "GD", "KL", "PO")
    # Train-split images of the concept in a baseline's forget set (x 2 prompts): by default the
    # same 100 positives SAUCE selects its features on (`DemoConfig.n_select`, the same stream).
    n_forget: int = 100
    n_retain_per_concept: int = 8  # train-split images of each other concept of the domain
    lr_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    steps_grid: tuple[int, ...] = (5, 10, 20)
    batch_size: int = 8
    retain_weight: float = 1.0
    kl_weight: float = 1.0
    lora: bool = False
    n_examples: int = 2  # Table 3: forget and retain images described per concept
    # Controls scored in the same run, at SAUCE reconstruct's chosen k and gamma: features drawn
    # at random among those with the selected ones' activation on positives (`control_draws`
    # draws per concept), and the top-k by activation on positives without eq. 4's contrast.
    controls: bool = True
    control_draws: int = 10
    paper_row: bool = True  # the paper's exact recipe as its own row (its own SAE)
    # SAUCE variants beyond the paper (`selective.VARIANTS`), each its own tuned row, and "per
    # concept": the row that chooses recipe and point per concept among `per_concept_candidates`.
    variants: tuple[str, ...] = ()
    per_concept_candidates: tuple[str, ...] = PER_CONCEPT_CANDIDATES
    paper_sae_images: int = 4000  # generic images (one token each) of the paper row's SAE
    paper_sae_steps: int = 2500  # its optimizer steps: the paper's 2 epochs of ImageNet
    # SAUCE's SAE: one per seed on the seed's generic stream (False), or the study's one generic
    # SAE per tower (`sauce.train_generic_sae`, True), trained once and reused by every seed.
    generic_sae: bool = False
    grid_moves: int = 1  # times the baselines' grid moves off an edge (SAUCE's: demo.grid_moves)

    def __post_init__(self):
        from sauce_jax.eval.baselines import METHODS

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"table2 methods {list(self.methods)} must be a non-empty subset of {METHODS}")
        if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
            raise ConfigError(f"table2 lr_grid={self.lr_grid} must be non-empty, every value > 0")
        if not self.steps_grid or any(not isinstance(s, int) or s < 1 for s in self.steps_grid):
            raise ConfigError(f"table2 steps_grid={self.steps_grid} must be non-empty integers >= 1")
        for name in ("n_forget", "n_retain_per_concept", "batch_size", "n_examples", "control_draws",
                     "paper_sae_images", "paper_sae_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"table2 {name}={getattr(self, name)} must be >= 1")
        if self.grid_moves < 0:
            raise ConfigError(f"table2 grid_moves={self.grid_moves} must be >= 0")
        check_variants(self.variants)
        check_candidates(self.per_concept_candidates)

    def baseline(self, method: str, lr: float, steps: int):
        from sauce_jax.eval.baselines import BaselineConfig
        from sauce_jax.eval.conceptworld.baseline_data import REFUSAL

        return BaselineConfig(method=method, lr=lr, steps=steps, batch_size=self.batch_size,
                              retain_weight=self.retain_weight, kl_weight=self.kl_weight, lora=self.lora,
                              seed=self.demo.seed, refusal=REFUSAL)


def quick_config(concepts=None, seed: int = 0) -> Table2Config:
    """The CI-sized run: few images everywhere, one point in each grid."""
    demo = DemoConfig(seed=seed, sae_images=1500, sae_steps=QUICK_SAE_STEPS, n_select=40, n_val=8, n_test=16,
                      n_pool=2, n_perception=30, k_grid=(32,), gamma_grid=(-1.0,))
    if concepts:
        demo = dataclasses.replace(demo, concepts=tuple(concepts))
    return Table2Config(demo=demo, n_forget=16, n_retain_per_concept=4, lr_grid=(3e-4,), steps_grid=(10,))


def study_concepts(seed: int) -> tuple[str, ...]:
    """The concepts a seed of the multi-seed study unlearns, drawn with the seed (so the study
    covers many concepts, none chosen by hand): one concrete concept (an object or a scene) and
    one abstract one (a color, an emotion or a material)."""
    from ..world import DOMAINS, TASKS, rng_for

    rng = rng_for(seed, "study-concepts")
    return tuple(str(rng.choice([c for d in TASKS[task] for c in DOMAINS[d]])) for task in ("concrete", "abstract"))


def study_config(seed: int = 0) -> Table2Config:
    """The multi-seed study's sizes (`experiment table2 --study --seeds ...`): two drawn concepts
    per seed, every method tuned on 12 configurations, sized so that one seed of one tower runs
    in about ten minutes on one CPU core. The baselines' forget set is exactly the positives
    SAUCE selects on (n_forget = n_select)."""
    # The v2 study's SAE (1,500 images, the 108 steps 2 epochs give them), kept so its reads reproduce.
    demo = dataclasses.replace(TUNED_DEMO, seed=seed, concepts=study_concepts(seed), sae_images=1500, sae_steps=None,
                               n_select=40, n_val=8, n_test=16, n_pool=1, n_perception=24)
    return Table2Config(demo=demo, n_forget=40, n_retain_per_concept=4)


def v3_concepts(seed: int) -> tuple[str, ...]:
    """ConceptWorld v3's four stratified concepts of a seed, drawn with it: one object, one scene,
    and one concept from each of two of the colour, material and emotion domains (which two is
    drawn too)."""
    from ..world import DOMAINS, rng_for

    rng = rng_for(seed, "v3-concepts")
    abstract = [str(d) for d in rng.choice(["color", "material", "emotion"], size=2, replace=False)]
    return tuple(str(rng.choice(DOMAINS[d])) for d in ("object", "scene", *abstract))


# v3's SAE budget (optimizer steps at batch 1,024) and image count: the smallest within 0.01 of the
# held-out plateau with < 5% dead latents (`experiment sae-curve`, docs/studies/sae-curve.md),
# the demo's default.
V3_SAE_STEPS = DemoConfig.sae_steps
V3_SAE_IMAGES = DemoConfig.sae_images


def v3_config(seed: int = 7) -> Table2Config:
    """ConceptWorld v3's preset (`experiment table2 --v3`, docs/studies/v3-protocol.md): four
    stratified concepts per seed (`v3_concepts`), 16 validation and 24 test images per concept,
    4 retain-pool images per concept (2 in validation), the study's one generic SAE at the
    plateau budget, every grid maximising the selective objective and moved off an edge at most
    twice."""
    demo = dataclasses.replace(TUNED_DEMO, seed=seed, concepts=v3_concepts(seed), sae_images=V3_SAE_IMAGES,
                               sae_steps=V3_SAE_STEPS, n_select=40, n_val=16, n_test=24, n_pool=4, n_perception=24,
                               objective="selective", grid_moves=2)
    return Table2Config(demo=demo, n_forget=40, n_retain_per_concept=4, generic_sae=True, grid_moves=2)


def _slug(row: str) -> str:
    return row.replace(" ", "-")


class _Context:
    """What the rows share, built on first use: the model, the encoder, both evaluations."""

    def __init__(self, config: Table2Config, model_dir, progress: bool):
        from sauce_jax.loading import load_encoder

        from .. import vlm

        self.config, self.progress = config, progress
        self.llava, self.processor = vlm.load(model_dir)
        self.encoder = load_encoder(self.llava)
        self.layer = self.encoder.layer_index(self.llava.config.vision_feature_layer)
        self.model = Model(self.llava, self.processor, self.encoder)
        self._test = self._val = None
        self._data: dict = {}
        self._retain_specs: dict = {}

    @property
    def test(self) -> Evaluation:
        if self._test is None:
            d = self.config.demo
            self._test = Evaluation(self.model, make_suite(d.concepts, seed=d.seed, split="test", n_forget=d.n_test,
                                                           n_pool_per_concept=d.n_pool, n_perception=d.n_perception))
        return self._test

    @property
    def val(self) -> Evaluation:
        # The same validation suite the demo's SAUCE grid uses.
        if self._val is None:
            self._val = Evaluation(self.model, validation_suite(self.config.demo))
        return self._val

    def data(self, concept: str):
        from sauce_jax.eval.conceptworld.baseline_data import build_data

        if concept not in self._data:
            c = self.config
            self._data[concept] = build_data(self.llava, self.processor.tokenizer, concept, seed=c.demo.seed,
                                             n_forget=c.n_forget, n_retain_per_concept=c.n_retain_per_concept)
        return self._data[concept]

    def retain_specs(self, concept: str) -> list:
        """Test-pool images of the concept's domain without it (Table 3's retain examples)."""
        if concept not in self._retain_specs:
            pool = [s for s in self.test.suite.pool if not s.has(concept)
                    and any(DOMAIN_OF[c] == DOMAIN_OF[concept] for c in s.concepts)]
            # A seeded draw, not the first ones: Table 3 shows what chance picks.
            shown = example_indices(len(pool), self.config.demo.seed, f"retain-{concept}", self.config.n_examples)
            self._retain_specs[concept] = [pool[i] for i in shown]
        return self._retain_specs[concept]

    def retain_examples(self, concept: str, variant: Model | None = None, unlearned=None) -> list[dict]:
        from .. import text as T
        from ..answers import describe

        specs = self.retain_specs(concept)
        clean = describe(self.llava, self.processor.tokenizer, self.model.features(specs))
        model = variant or self.model
        edited = describe(model.model, model.tokenizer, model.features(specs, unlearned))
        return [{"truth": T.description(s), "clean": c, "edited": e} for s, c, e in zip(specs, clean, edited)]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def _original_row(ctx: _Context) -> dict:
    results = []
    for concept in tqdm(ctx.config.demo.concepts, desc="original", disable=not ctx.progress, leave=False):
        result = ctx.test.run(concept)
        result["retain_examples"] = ctx.retain_examples(concept, ctx.model)
        results.append(result)
    return {"hyperparameters": {}, "per_concept": results}


def _baseline_row(ctx: _Context, method: str) -> dict:
    """The (lr, steps) grid on val (`tuning.search`; one run per concept and learning rate,
    scored at each step count and continued when the grid moves to more steps), then the test
    split once."""
    from sauce_jax.eval.baselines import Unlearner
    from sauce_jax.eval.baselines.trainer import set_losses

    config, concepts = ctx.config, ctx.config.demo.concepts
    runs: dict = {}  # (concept, lr) -> Unlearner, advanced in step order

    def score(point):
        lr, steps = point["lr"], point["steps"]
        values = []
        for concept in concepts:
            run = runs.get((concept, lr))
            if run is None or run.step > steps:
                run = runs[(concept, lr)] = Unlearner(ctx.llava, ctx.data(concept), config.baseline(method, lr, steps))
            variant = ctx.model.with_language_model(run.train_to(steps).model_now())
            values.append(grid_objective(ctx.val.run(concept, model=variant), config.demo))
        value = float(np.mean(values))
        _say(ctx.progress, f"  val {method} {label(point)}: {value:.3f}")
        return value

    axes = [Axis("lr", tuple(config.lr_grid), low=0.0), Axis("steps", tuple(sorted(config.steps_grid)), low=1,
                                                             integer=True)]
    found = search(axes, score, moves=config.grid_moves)
    runs.clear()
    lr, steps = found["best"]["lr"], found["best"]["steps"]
    results = []
    for concept in tqdm(concepts, desc=f"{method} test", disable=not ctx.progress, leave=False):
        data = ctx.data(concept)
        run = Unlearner(ctx.llava, data, config.baseline(method, lr, steps)).train_to(steps)
        edited = run.model_now()
        variant = ctx.model.with_language_model(edited)
        result = ctx.test.run(concept, model=variant)
        result["losses"] = {"before": set_losses(ctx.llava, data), "after": set_losses(edited, data)}
        result["retain_examples"] = ctx.retain_examples(concept, variant)
        results.append(result)
        _say(ctx.progress, f"  test {method} {concept}: " + _brief(result))
    return {"hyperparameters": {"lr": lr, "steps": steps, "val_objective": round(found["score"], 4),
                                "batch_size": config.batch_size, "lora": config.lora},
            "val_grid": found["grid"], "grids": found["grids"], "moved": found["moved"], "edge": found["edge"],
            "per_concept": results}


CONTROLS = ("control matched-random", "control no-contrast")
PAPER_ROW = "SAUCE paper recipe"


def _search_notes(chosen: dict) -> dict:
    return {key: chosen[key] for key in ("grids", "moved", "edge") if key in chosen}


def _sauce_setup(ctx: _Context, out: Path, generic_sae_dir: Path):
    """SAUCE's SAE (the seed's own, or the study's generic one at `generic_sae_dir`), feature
    sets and validation-chosen (k, gamma), computed once per run folder."""
    from ..sauce import train_generic_sae

    demo = ctx.config.demo
    t0 = time.time()
    if ctx.config.generic_sae:
        sae = train_generic_sae(ctx.encoder, generic_sae_dir, demo, ctx.layer, ctx.progress)
    else:
        sae = train_concept_sae(ctx.encoder, out / "sae_run", demo, ctx.layer, ctx.progress)
    sets = select_all(sae, ctx.encoder, demo, ctx.layer, ctx.progress)
    chosen_path = out / "sauce_chosen.json"
    if chosen_path.is_file():
        chosen = json.loads(chosen_path.read_text())
    else:
        chosen = choose_hyperparameters(ctx.model, ctx.encoder, sae, sets, demo, ctx.layer, ctx.progress,
                                        evaluation=ctx.val)
        chosen_path.write_text(json.dumps(chosen, indent=1))
    return sae, sets, chosen, time.time() - t0


def _paper_row(ctx: _Context, out: Path, sae_dir: Path) -> dict:
    """The paper's exact recipe (`sauce.PAPER_RECIPE`): its own ReLU-L1 x64 SAE on the last token
    of hidden state -2 (trained at `sae_dir` if not there yet), eq. 4 on the last token, gamma
    -0.5, reconstruct; only k (which the paper does not state) is chosen on validation, over the
    same k grid as the SAUCE row."""
    from sauce_jax.intervention import unlearn

    from ..sauce import PAPER_RECIPE, train_paper_sae

    demo, recipe = ctx.config.demo, PAPER_RECIPE
    start = time.time()
    layer = ctx.encoder.layer_index(recipe["layer"])
    sae = train_paper_sae(ctx.encoder, sae_dir, ctx.progress, images=ctx.config.paper_sae_images,
                          steps=ctx.config.paper_sae_steps)
    fixed = dataclasses.replace(demo, gamma_grid=(recipe["gamma"],))
    sets = select_all(sae, ctx.encoder, fixed, layer, ctx.progress, token=recipe["token"])
    chosen = cached(out / "sauce_paper_chosen.json", lambda: choose_hyperparameters(
        ctx.model, ctx.encoder, sae, sets, fixed, layer, ctx.progress, modes=("reconstruct",),
        evaluation=ctx.val)["reconstruct"])
    k, gamma = chosen["k"], recipe["gamma"]
    results = []
    for concept in tqdm(demo.concepts, desc=PAPER_ROW, disable=not ctx.progress, leave=False):
        edited = unlearn(ctx.encoder, sae, sets[concept].top(k, gamma), layer=layer, gamma=gamma, mode="reconstruct")
        result = ctx.test.run(concept, edited)
        result["retain_examples"] = ctx.retain_examples(concept, unlearned=edited)
        results.append(result)
    return {"hyperparameters": {"k": k, "gamma": gamma, "layer": recipe["layer"], "token": recipe["token"],
                                "sae": f"{recipe['architecture']} x{recipe['expansion']}",
                                "val_objective": chosen["val_objective"]},
            "val_grid": chosen["grid"], **_search_notes(chosen), "per_concept": results,
            "seconds": time.time() - start}


def _sauce_rows(ctx: _Context, out: Path, todo: list[str], prepared) -> dict[str, dict]:
    from sauce_jax.intervention import unlearn

    demo = ctx.config.demo
    sae, sets, chosen, setup = prepared  # setup: SAE (or its reuse), selection and validation grid seconds
    rows = {}
    if SAE_ONLY in todo:
        start = time.time()
        results = []
        for concept in tqdm(demo.concepts, desc=SAE_ONLY, disable=not ctx.progress, leave=False):
            edited = sae_only(ctx.encoder, sae, sets[concept], ctx.layer)
            result = ctx.test.run(concept, edited)
            result["retain_examples"] = ctx.retain_examples(concept, unlearned=edited)
            results.append(result)
        rows[SAE_ONLY] = {"hyperparameters": {"sae_only": True, "mode": "reconstruct", "gamma": 1.0,
                                              "val_objective": None},
                          "per_concept": results, "seconds": time.time() - start, "setup_seconds": round(setup, 1)}
        _write_row(out, SAE_ONLY, rows[SAE_ONLY])
    for mode in MODES:
        name = f"SAUCE {mode}"
        if name not in todo:
            continue
        start = time.time()
        k, gamma = chosen[mode]["k"], chosen[mode]["gamma"]
        results = []
        for concept in tqdm(demo.concepts, desc=name, disable=not ctx.progress, leave=False):
            edited = unlearn(ctx.encoder, sae, sets[concept].top(k, gamma), layer=ctx.layer, gamma=gamma, mode=mode)
            result = ctx.test.run(concept, edited)
            result["retain_examples"] = ctx.retain_examples(concept, unlearned=edited)
            results.append(result)
        rows[name] = {"hyperparameters": {"k": k, "gamma": gamma, "val_objective": chosen[mode]["val_objective"]},
                      "val_grid": chosen[mode]["grid"], **_search_notes(chosen[mode]), "per_concept": results,
                      "seconds": time.time() - start, "setup_seconds": round(setup, 1)}
        _write_row(out, name, rows[name])
    return rows


def _control_rows(ctx: _Context, out: Path, todo: list[str], prepared) -> None:
    """The controls at SAUCE reconstruct's chosen k and gamma, scored on the same test images."""
    demo = ctx.config.demo
    chosen = prepared[2]
    k, gamma = chosen["reconstruct"]["k"], chosen["reconstruct"]["gamma"]
    start = time.time()
    rows: dict[str, list] = {name: [] for name in CONTROLS}
    for concept in tqdm(demo.concepts, desc="controls", disable=not ctx.progress, leave=False):
        # Each concept's controls are kept in parts/ as soon as they are scored: a rerun resumes there.
        done = cached(out / "parts" / f"controls-{concept}.json", lambda: _controls_of(ctx, prepared, concept, k, gamma))
        for name in CONTROLS:
            rows[name].append(done[name])
        _say(ctx.progress, f"  controls {concept}: no-contrast {_brief(done['control no-contrast'])}; "
                           f"matched-random {_brief(done['control matched-random'])}")
    for name in CONTROLS:
        if name in todo:
            _write_row(out, name, {"hyperparameters": {"k": k, "gamma": gamma, "val_objective": None,
                                                       "draws": ctx.config.control_draws if "random" in name else 1},
                                   "per_concept": rows[name], "seconds": time.time() - start})


def _controls_of(ctx: _Context, prepared, concept: str, k: int, gamma: float) -> dict:
    from sauce_jax.intervention import unlearn

    demo = ctx.config.demo
    sae, sets, _, _ = prepared
    mean = positives_mean(sae, ctx.encoder, demo, ctx.layer, concept)
    made = control_sets(sets[concept].top(k, gamma), mean, ctx.config.control_draws, demo.seed)

    def score(features):
        edited = unlearn(ctx.encoder, sae, features, layer=ctx.layer, gamma=gamma, mode="reconstruct")
        return ctx.test.run(concept, edited)

    return {"control no-contrast": score(made["no-contrast"]),
            "control matched-random": mean_results([score(f) for f in made["matched-random"]])}


def _brief(result: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in headline(result).items())


def _row_path(out: Path, name: str) -> Path:
    return out / "rows" / f"{_slug(name)}.json"


def _write_row(out: Path, name: str, row: dict) -> None:
    row = {"method": name, **row, "table2": task_table(row["per_concept"])}
    path = _row_path(out, name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=str))
    tmp.replace(path)  # a row file is complete or absent: a rerun trusts what it finds


# Options of rows of their own, not part of a run's identity: a variant added later only adds its row.
_ROW_OPTIONS = ("variants", "per_concept_candidates")


def _check_same_run(out: Path, config: Table2Config) -> None:
    """Refuse a folder holding another configuration (`_ROW_OPTIONS` aside)."""
    path = out / "config.json"
    mine = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    if path.is_file():
        theirs = json.loads(path.read_text())
        if not same_config({k: v for k, v in theirs.items() if k not in _ROW_OPTIONS},
                           {k: v for k, v in mine.items() if k not in _ROW_OPTIONS}):
            raise ConfigError(f"{out} holds a table2 run with another config ({path}); use a new folder")
    path.write_text(json.dumps(mine, indent=1))


def run(out_dir: str | Path, config: Table2Config | None = None, *, model_dir=None, progress: bool = True,
        paper_sae_dir=None, generic_sae_dir=None) -> dict:
    """Run (or resume) the experiment; returns what `results.json` holds. The paper row's SAE is
    trained at `paper_sae_dir` (default `OUT/sae_paper`), or reused from there; with
    `config.generic_sae`, SAUCE's at `generic_sae_dir` (default `OUT/sae_generic`)."""
    config = config or Table2Config()
    out = Path(out_dir)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    _check_same_run(out, config)
    t0 = time.time()
    variant_names = {row_name(v): v for v in config.variants}
    sauce = ["SAUCE reconstruct", *([PAPER_ROW] if config.paper_row else []), "SAUCE delta", *variant_names]
    controls = [*CONTROLS, *([PER_CONCEPT_CONTROL] if PER_CONCEPT in variant_names else [])] if config.controls else []
    wanted = ["original", *([SAE_ONLY] if config.demo.sae_only_row else []), *config.methods, *sauce, *controls]
    todo = []
    for name in wanted:
        if _row_path(out, name).is_file():
            _say(progress, f"{name}: done in an earlier run, skipped")
        else:
            todo.append(name)
    ctx = _Context(config, model_dir, progress) if todo else None
    for name in todo:
        if name.startswith(("SAUCE", "control")):
            continue
        _say(progress, f"[{name}]")
        start = time.time()
        row = _original_row(ctx) if name == "original" else _baseline_row(ctx, name)
        row["seconds"] = time.time() - start
        _write_row(out, name, row)
    if PAPER_ROW in todo:
        _say(progress, f"[{PAPER_ROW}]")
        _write_row(out, PAPER_ROW, _paper_row(ctx, out, Path(paper_sae_dir or out / "sae_paper")))
    sauce_todo = [name for name in todo if name.startswith("SAUCE") and name != PAPER_ROW
                  and name not in variant_names]
    variant_todo = [name for name in todo if name in variant_names]
    if PER_CONCEPT_CONTROL in todo and PER_CONCEPT not in variant_todo:  # the two are computed together
        variant_todo.append(PER_CONCEPT)
    control_todo = [name for name in todo if name in CONTROLS]
    if sauce_todo or control_todo or variant_todo:
        prepared = _sauce_setup(ctx, out, Path(generic_sae_dir or out / "sae_generic"))
        if sauce_todo:
            _say(progress, "[SAUCE]")
            _sauce_rows(ctx, out, sauce_todo, prepared)
        if control_todo:
            _say(progress, "[controls]")
            _control_rows(ctx, out, control_todo, prepared)
        for name in variant_todo:
            _say(progress, f"[{name}]")
            if name == PER_CONCEPT:
                made = per_concept_rows(ctx, prepared, progress, config.per_concept_candidates,
                                        config.control_draws if config.controls else 0)
            else:
                made = {name: variant_row(variant_names[name], ctx, prepared, progress)}
            for made_name, row in made.items():
                _write_row(out, made_name, row)
    rows = {name: json.loads(_row_path(out, name).read_text()) for name in wanted}  # as written, old and new
    tables = {name: row["table2"] for name, row in rows.items()}
    results = {"config": json.loads((out / "config.json").read_text()), "table2": tables, "rows": rows,
               "meta": {"seconds_this_run": round(time.time() - t0, 1),
                        "seconds_per_row": {n: round(r.get("seconds", 0.0), 1) for n, r in rows.items()}}}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    from .table2_report import markdown, plot

    (out / "table2.md").write_text(markdown(results))
    plot(tables, out / "table2.png")
    return results
