"""A synthetic multi-domain ad dataset for MTMD: surfaces × ad product types, distilled from a teacher.

    mtmd_synthetic(rows, seed)   rows of (query, item, domain) features and a hidden heavier model's
                                 CTR and GCTR probabilities (the labels a lightweight ranker learns)

`--data mtmd_synthetic[:ROWS]` reads it with the bundled schema kzoo/datasets/mtmd_synthetic.json.

What makes it multi-domain (each is something one model per domain, or one shared model without
domain experts, gets wrong in its own way):

- **Surfaces** (the query tower's domains): home, search, related, with 50/30/20 % of the
  traffic. The teacher maps user and ad latent vectors through a surface-specific matrix, so the
  same user likes different ads on different surfaces; the surfaces also share most of that
  structure (the matrices are the identity plus noise), so a small surface gains from the others.
- **Ad product types** (the item tower's domains): standard and shopping (70/30 %), with their own
  matrix in the teacher and their own GCTR behaviour (shopping ads convert by price).
- **Features that exist in some domains only**: `query_match` (how well the ad matches the search
  query) exists on search and is 0 elsewhere; `price` exists for shopping ads and is 0 elsewhere.
- **Shifted continuous features**: `user_activity` is on another scale on every surface (a
  search session counts queries, a home session scrolls), which is what per-domain
  normalisation is for.
- **The teacher**: CTR = σ(-3 + 0.9·uᵀA_sB_pv + 0.5·quality + 0.4·tanh(activity_s) +
  1.5·query_match·[search] + b_s + c_p); GCTR = CTR·σ(g), g depending on the user, the ad's
  quality, log price on shopping ads and the product type. The lightweight model sees ids and
  features, never the latent vectors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SURFACES = ("home", "search", "related")
PRODUCTS = ("standard", "shopping")
DIM = 8


def mtmd_synthetic(rows: int = 60000, seed: int = 0, users: int = 3000, items: int = 2000) -> pd.DataFrame:
    """`rows` impressions. Columns: user_id, user_country, surface, user_activity, query_match, item_id,
    advertiser, product_type, item_quality, price (str ids, float32 numbers), teacher_ctr and
    teacher_gctr (float32 probabilities, GCTR ≤ CTR)."""
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(12345)  # the same users, ads and teacher for every seed
    u_vec = world.normal(size=(users, DIM)) / np.sqrt(DIM)
    v_vec = world.normal(size=(items, DIM))
    surface_mat = np.eye(DIM)[None] + 0.6 * world.normal(size=(len(SURFACES), DIM, DIM)) / np.sqrt(DIM)
    product_mat = np.eye(DIM)[None] + 0.6 * world.normal(size=(len(PRODUCTS), DIM, DIM)) / np.sqrt(DIM)
    surface_bias = np.array([0.0, 0.6, -0.4])
    product_bias = np.array([0.0, -0.3])
    user_country = world.integers(0, 12, users)
    user_g = world.normal(size=users) * 0.5
    item_product = (world.random(items) < 0.3).astype(int)
    item_advertiser = world.integers(0, 150, items)
    item_quality = world.normal(size=items)
    item_price = np.where(item_product == 1, np.exp(world.normal(3.0, 1.0, items)), 0.0)
    activity_base = world.gamma(2.0, 1.0, users)
    activity_scale = np.array([1.0, 8.0, 0.3])
    activity_shift = np.array([0.0, 5.0, 1.0])

    user = rng.integers(0, users, rows)
    item = rng.integers(0, items, rows)
    surface = rng.choice(len(SURFACES), rows, p=[0.5, 0.3, 0.2])
    product = item_product[item]
    activity = activity_base[user] * activity_scale[surface] + activity_shift[surface] + rng.normal(0, 0.1, rows)
    activity_z = (activity - activity_shift[surface]) / activity_scale[surface] - 2.0  # what the teacher reads
    search = surface == 1
    match = np.where(search, rng.beta(2, 3, rows), 0.0)
    qa = np.einsum("rd,rde->re", u_vec[user], surface_mat[surface])
    vb = np.einsum("red,rd->re", product_mat[product], v_vec[item])
    ctr_logit = (-3.0 + 0.9 * np.sum(qa * vb, axis=1) + 0.5 * item_quality[item] + 0.4 * np.tanh(activity_z)
                 + 1.5 * match + surface_bias[surface] + product_bias[product])
    g_logit = (-1.0 + user_g[user] + 0.4 * item_quality[item] - 0.5 * np.log1p(item_price[item]) * (product == 1)
               + 0.8 * (product == 1) - 0.3 * search)
    ctr = 1 / (1 + np.exp(-ctr_logit))
    gctr = ctr / (1 + np.exp(-g_logit))
    return pd.DataFrame({
        "user_id": pd.Series(user).astype(str).to_numpy(dtype=object),
        "user_country": pd.Series(user_country[user]).astype(str).to_numpy(dtype=object),
        "surface": np.array(SURFACES, dtype=object)[surface],
        "user_activity": activity.astype("float32"),
        "query_match": match.astype("float32"),
        "item_id": pd.Series(item).astype(str).to_numpy(dtype=object),
        "advertiser": pd.Series(item_advertiser[item]).astype(str).to_numpy(dtype=object),
        "product_type": np.array(PRODUCTS, dtype=object)[product],
        "item_quality": item_quality[item].astype("float32"),
        "price": item_price[item].astype("float32"),
        "teacher_ctr": ctr.astype("float32"),
        "teacher_gctr": gctr.astype("float32"),
    })
