"""The exported unlearned model against our JAX path, on the shipped ConceptWorld LLaVA, one run.

    python -m benchmarks.export_parity --out /tmp/export-parity             # concept "star", 32 + 32 images
    python -m benchmarks.export_parity --out DIR --concept red --n 64

Trains (or resumes) the CI-sized ConceptWorld SAE, selects the concept's 32 features (gamma
-1, reconstruct), writes `sauce-jax export` of the shipped float16 checkpoint and loads it
with `AutoModelForImageTextToText(..., trust_remote_code=True)` in float32. On the concept's
test images (with and without it) it compares, against the JAX tower through the bridge
(`llava_image_features` with `sauce_jax.unlearn`): the yes/no answer to the concept's
question, the greedy description, and the last-position logits; and, as the control, how
often the clean model and each unlearned path answer "yes" / name the concept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="work folder (the SAE run resumes there)")
    parser.add_argument("--concept", default="star")
    parser.add_argument("--n", type=int, default=32, help="test images with, and as many without, the concept")
    args = parser.parse_args(argv)

    import torch
    import transformers

    import sauce_jax
    from sauce_jax.eval.conceptworld import text as T
    from sauce_jax.eval.conceptworld import vlm
    from sauce_jax.eval.conceptworld.answers import describe, prompt_batch, says_yes
    from sauce_jax.eval.conceptworld.render import render_many
    from sauce_jax.eval.conceptworld.sauce import load_model, quick_demo, select_all, train_concept_sae
    from sauce_jax.eval.conceptworld.world import concept_split
    from sauce_jax.eval.vlm.llava_bridge import llava_image_features, logits_with_features

    out = Path(args.out)
    llava, processor, encoder, layer, _ = load_model()
    tokenizer = processor.tokenizer
    demo = quick_demo([args.concept])
    sae = train_concept_sae(encoder, out / "sae_run", demo, layer, progress=False)
    features = select_all(sae, encoder, demo, layer, progress=False)[args.concept].top(32, -1.0)
    start = time.perf_counter()
    sauce_jax.export_unlearned(vlm.SHIPPED, sae, features, out / "export", overwrite=True)
    export_seconds = time.perf_counter() - start
    exported = transformers.AutoModelForImageTextToText.from_pretrained(
        out / "export", trust_remote_code=True, dtype=torch.float32).eval()
    unlearned = sauce_jax.unlearn(encoder, sae, features)

    images = np.concatenate([render_many(concept_split(args.concept, "test", args.n, seed=s, positive=p))
                             for s, p in ((0, True), (0, False))])  # [2n, S, S, 3]
    nchw = vlm.pixels_nchw(images)
    nhwc = nchw.permute(0, 2, 3, 1).numpy()
    question = [T.question(args.concept)] * len(images)
    clean = llava_image_features(llava, encoder, nhwc)
    jax_path = llava_image_features(llava, encoder, nhwc, unlearned=unlearned)

    ids, mask = prompt_batch(tokenizer, question)
    yes_id, no_id = tokenizer.convert_tokens_to_ids(T.YES["en"]), tokenizer.convert_tokens_to_ids(T.NO["en"])
    with torch.no_grad():
        logits_exported = exported(input_ids=ids, attention_mask=mask, pixel_values=nchw).logits[:, -1]

    logits_jax = logits_with_features(llava, ids, mask, jax_path)[:, -1]
    yes_exported = (logits_exported[:, yes_id] > logits_exported[:, no_id]).numpy()
    yes_jax = says_yes(llava, tokenizer, jax_path, question)
    yes_clean = says_yes(llava, tokenizer, clean, question)

    ids, mask = prompt_batch(tokenizer, [T.DESCRIBE["en"]] * len(images))
    with torch.no_grad():
        generated = exported.generate(input_ids=ids, attention_mask=mask, pixel_values=nchw, max_new_tokens=28,
                                      do_sample=False)
    said_exported = [t.strip() for t in tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)]
    said_jax = describe(llava, tokenizer, jax_path)
    said_clean = describe(llava, tokenizer, clean)

    n = args.n
    rate = lambda flags: float(np.mean(flags))  # noqa: E731
    names = lambda said: [T.mentions(s, args.concept) for s in said]  # noqa: E731
    result = {
        "concept": args.concept, "images": 2 * n, "export_seconds": round(export_seconds, 2),
        "logits_relative_error": float(torch.linalg.norm(logits_exported - logits_jax) / torch.linalg.norm(logits_jax)),
        "yes_no_agreement": rate(yes_exported == yes_jax),
        "description_identical": rate([a == b for a, b in zip(said_exported, said_jax)]),
        "yes_rate_with_concept": {"clean": rate(yes_clean[:n]), "jax": rate(yes_jax[:n]),
                                  "exported": rate(yes_exported[:n])},
        "named_in_description_with_concept": {"clean": rate(names(said_clean)[:n]), "jax": rate(names(said_jax)[:n]),
                                              "exported": rate(names(said_exported)[:n])},
        "yes_rate_without_concept": {"clean": rate(yes_clean[n:]), "jax": rate(yes_jax[n:]),
                                     "exported": rate(yes_exported[n:])},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
