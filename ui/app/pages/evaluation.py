"""Evaluation: the latest retrieval, grounding, tag and caption figures from the catalog's runs, by model."""

import pandas as pd
import streamlit as st

from ui.app import data, resources

workdir = resources.workdir()
st.title("Evaluation")
runs = data.latest_evaluations(workdir)
if not any(runs.values()):
    st.info("No evaluation has run on this workdir yet: `groundex eval retrieval|grounding|tags|captions`.")
    st.stop()


def _other_boxes(result: dict) -> str:
    """The box path the evaluation did not choose (a model with a box head has both), as any-box / merged-box."""
    for key, name in (("heatmap_path", "heatmap"), ("box_head_path", "box head"),
                      ("heatmap_boxes", "heatmap"), ("box_head_boxes", "box head")):  # the last two: older runs
        if key in result:
            return f"{name}: {result[key]['box_acc@0.5']:.1f} / {result[key]['box_acc@0.5_merged']:.1f}"
    return ""


def latest_by(rows: list[dict], key: str) -> list[dict]:
    """The newest run for each (model or captioner, split)."""
    seen, out = set(), []
    for r in rows:
        ident = (r["result"].get(key) or r["model_id"], r["result"].get("split"))
        if ident not in seen:
            seen.add(ident)
            out.append(r)
    return out


DIRECTIONS = {"text_to_image": "text → image", "image_to_text": "image → text"}
retrieval = latest_by(runs["eval retrieval"], "model_id")
if retrieval:
    st.header("Retrieval (recall@K, %)")
    rows = [{"model": r["result"]["model_id"], "split": r["result"]["split"], "direction": DIRECTIONS[d],
             "K": int(k[2:]), "recall": v}
            for r in retrieval for d in DIRECTIONS for k, v in r["result"][d].items()]
    table = pd.DataFrame(rows)
    st.dataframe(table.pivot_table(index=["model", "split", "direction"], columns="K", values="recall"),
                 width="stretch")
    table["curve"] = table["model"].str[:8] + " " + table["split"] + " " + table["direction"]
    st.line_chart(table, x="K", y="recall", color="curve")

grounding = latest_by(runs["eval grounding"], "model_id")
if grounding:
    st.header("Grounding (Flickr30k Entities)")
    st.dataframe([{"model": r["result"]["model_id"], "split": r["result"]["split"], "phrases": r["result"]["phrases"],
                   "pointing game": r["result"]["pointing_game"],
                   "pointing game (15 px)": r["result"].get("pointing_game_15px"),
                   "box acc@0.5 any-box": r["result"]["box_acc@0.5"],
                   "box acc@0.5 merged-box": r["result"].get("box_acc@0.5_merged"),  # runs before both were kept
                   "boxes from": r["result"].get("boxes_from", "heatmap"),
                   "other path's any-box / merged-box": _other_boxes(r["result"])}
                  for r in grounding], hide_index=True, width="stretch")
    st.caption("Pointing game: the peak of the box head's scores (or of the heatmap, for a model without a head or "
               "when the heatmap serves) inside one of the phrase's boxes (no tolerance; 15 px: Zhang et "
               "al.'s). Box accuracy at IoU 0.5 of the top box: any-box counts any one of the phrase's boxes "
               "(MDETR's ANY-BOX); merged-box their enclosing box (Plummer et al.'s protocol, MDETR's MERGED-BOX).")
    by_type = pd.DataFrame([{"model": r["result"]["model_id"][:8], "type": t, "pointing game": v["pointing_game"],
                             "centre baseline": v.get("center_pointing_game")}
                            for r in grounding for t, v in r["result"].get("by_type", {}).items()])
    if not by_type.empty:
        st.bar_chart(by_type, x="type", y=["pointing game", "centre baseline"], stack=False)

tags = latest_by(runs["eval tags"], "model_id")
if tags:
    st.header("Tags")
    table = pd.DataFrame([{"model": r["result"]["model_id"][:8], "split": r["result"]["split"], "method": m,
                           "micro-F1": v["micro_f1"], "macro-F1": v["macro_f1"], "mAP": v["mAP"],
                           "per-tag thresholds: micro-F1": v.get("per_tag", {}).get("micro_f1"),
                           "per-tag thresholds: macro-F1": v.get("per_tag", {}).get("macro_f1")}
                          for r in tags for m, v in r["result"]["methods"].items()])
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption("fusion_caption_assisted reads each image's own captions, which its labels come from: it measures "
               "keyword extraction, not what the pixels show (fusion hides them, as for an uncaptioned image). "
               "Per-tag thresholds on val are scored cross-fitted: chosen on one half of val, scored on the other.")
    st.bar_chart(table, x="method", y=["micro-F1", "macro-F1", "mAP"], stack=False)

captions = latest_by(runs["eval captions"], "captioner_id")
if captions:
    st.header("Captions")
    table = pd.DataFrame([{"captioner": r["result"]["captioner_id"][:8], "split": r["result"]["split"], "method": m,
                           **v} for r in captions for m, v in r["result"]["methods"].items()])
    st.dataframe(table, hide_index=True, width="stretch")
    by_k = pd.DataFrame([{"captioner": r["result"]["captioner_id"][:8], "k": int(k), "CIDEr": v["CIDEr"],
                          "BLEU-4": v["BLEU-4"]} for r in captions for k, v in r["result"]["by_k"].items()])
    st.caption("effect of k (retrieved captions in the prompt; 0 = none)")
    st.line_chart(by_k, x="k", y=["CIDEr", "BLEU-4"])
