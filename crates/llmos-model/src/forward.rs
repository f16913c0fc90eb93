//! The forward pass: tokens in, logits out, with a KV cache that grows as it fills.
//!
//! Shapes: T tokens in this call, C = n_embd, H/Hkv heads, D head dim, F = n_ff, V = vocab.
//! Activations are f32 throughout; every matrix product goes through
//! `llmos_tensor::matmul`.

use crate::profile::{Laps, Phase};
use crate::{Arch, Model, ModelError};
use llmos_tensor::ops::{
    attend_online, gelu_tanh, rmsnorm, rmsnorm_inplace, rope_cs, rope_inv_freqs, silu,
};
use llmos_tensor::pool::for_each_chunk_mut;
use llmos_tensor::q8::{
    dot_rows_lanes, dot_rows_lanes_f16, dot_rows_lanes_multi, dot_rows_lanes_multi_f16,
    f16_bits_from_f32, f32_from_f16_bits, lane_dots, pack_v_cols, rmsnorm_lanes,
    rmsnorm_lanes_inplace, rope_cos_sin_lanes, round_f16_slice, softmax_scaled_lanes,
    weighted_rows_lanes, weighted_rows_lanes_f16, weighted_rows_lanes_multi,
    weighted_rows_lanes_multi_f16,
};
use llmos_tensor::{ActCache, ActMode, Weight, matmul_cached, matmul_cached_multi};

/// Keys and values of every layer for the positions seen so far.
pub struct KvCache {
    /// Keys and values per (layer, KV head), index l * Hkv + h: [len, D] and [len, Dv], so
    /// the positions a head's attention reads are one contiguous run (with the heads
    /// interleaved per position, a head used a quarter of every cache line it brought in
    /// from memory: decoding's attention waited on those lines). In f32 for
    /// [`ActMode::F32`]; for [`ActMode::Q8`] as f16 bits in `k16` / `v16`, llama.cpp's f16
    /// cache (the values are rounded to f16 before they are stored, so nothing is lost and
    /// the cache takes half the memory).
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    k16: Vec<Vec<u16>>,
    v16: Vec<Vec<u16>>,
    len: usize,
    ctx: usize,
    /// Activation buffers reused from call to call, so a decode step allocates none.
    scratch: Scratch,
}

/// The forward pass's working buffers and quantized-activation caches.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    /// attention outputs ordered by (KV head, row) while prompts are computed
    att_kv: Vec<f32>,
    /// V of each (sequence, KV head) packed by lane slot while prompts are computed
    v_packed: Vec<Vec<f32>>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    c_h: ActCache,
    c_att: ActCache,
    c_g: ActCache,
}

thread_local! {
    /// The attention scores of one task's queries, reused by each thread from task to task.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// One KV head's keys and values converted from the f16 cache, with the (layer epoch,
    /// sequence, KV head) they belong to.
    #[allow(clippy::type_complexity)]
    static KV32: std::cell::RefCell<(Option<(u64, usize, usize)>, Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((None, Vec::new(), Vec::new())) };
}

/// A number no other layer of any forward pass has: the key that keeps a thread's
/// converted KV run from being taken for another layer's or call's.
static KV_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Appends `x` (values that are f16 already) to an f16 cache run as f16 bits.
fn append_f16(run: &mut Vec<u16>, x: &[f32]) {
    let at = run.len();
    run.resize(at + x.len(), 0);
    f16_bits_from_f32(x, &mut run[at..]);
}

/// `buf` resized to `n` zeros, keeping its allocation.
fn sized(buf: &mut Vec<f32>, n: usize) -> &mut Vec<f32> {
    buf.clear();
    buf.resize(n, 0.0);
    buf
}

impl KvCache {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache holds.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Forgets everything after the first `n` positions (n <= len); `d` and `dv` are the
    /// head sizes of keys and values.
    fn truncate(&mut self, n: usize, d: usize, dv: usize) {
        let n = n.min(self.len);
        for h in &mut self.k {
            h.truncate(n * d);
        }
        for h in &mut self.v {
            h.truncate(n * dv);
        }
        for h in &mut self.k16 {
            h.truncate(n * d);
        }
        for h in &mut self.v16 {
            h.truncate(n * dv);
        }
        self.len = n;
    }
}

impl Model {
    /// Adds projection `proj` of layer `l`'s LoRA term (if the model has one) into `y`.
    fn lora_add(&self, l: usize, proj: usize, x: &[f32], y: &mut [f32]) {
        if let Some(p) = self.lora.as_ref().and_then(|a| a[l][proj].as_ref()) {
            p.apply(x, y);
        }
    }

    /// An empty cache for up to `ctx` positions (clamped to the training context).
    pub fn new_cache(&self, ctx: usize) -> KvCache {
        let c = &self.config;
        KvCache {
            k: vec![Vec::new(); c.n_layer * c.n_head_kv],
            v: vec![Vec::new(); c.n_layer * c.n_head_kv],
            k16: vec![Vec::new(); c.n_layer * c.n_head_kv],
            v16: vec![Vec::new(); c.n_layer * c.n_head_kv],
            len: 0,
            ctx: ctx.min(c.ctx_train).max(1),
            scratch: Scratch::default(),
        }
    }

    /// Forgets cache positions from `n` on (to rewind or reuse a prefix).
    pub fn truncate_cache(&self, cache: &mut KvCache, n: usize) {
        let c = &self.config;
        cache.truncate(n, c.head_dim, c.head_dim_v);
    }

    /// Runs `tokens` at the positions after those already in `cache` and appends their keys
    /// and values. Returns logits [V] of the last token, or [T, V] of every token when
    /// `all_logits` is set.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.forward_seqs(&mut [cache], &[tokens], all_logits)
    }

    /// One step for several sequences at once (continuous batching): sequence `i` runs
    /// `tokens[i]` after the positions in `caches[i]`. Every weight matrix is read once for
    /// all of their rows, and each sequence's result equals what [`Model::forward`] gives it
    /// alone, bit for bit. Returns the last token's logits of each sequence, [S, V].
    pub fn forward_batch(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
    ) -> Result<Vec<f32>, ModelError> {
        assert_eq!(caches.len(), tokens.len(), "one token list per cache");
        if let Some(i) = tokens.iter().position(|t| t.is_empty()) {
            return Err(ModelError::EmptySequence(i));
        }
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.forward_seqs(caches, tokens, false)
    }

    fn forward_seqs(
        &self,
        caches: &mut [&mut KvCache],
        seqs: &[&[u32]],
        all_logits: bool,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let mut laps = Laps::start();
        // rows of this call: (sequence, position), sequences one after another
        let mut row_seq = Vec::new();
        let mut row_pos = Vec::new();
        for (si, (cache, toks)) in caches.iter().zip(seqs).enumerate() {
            if cache.len + toks.len() > cache.ctx {
                return Err(ModelError::ContextFull {
                    need: cache.len + toks.len(),
                    ctx: cache.ctx,
                    train: c.ctx_train,
                });
            }
            // the cache holds f16 in q8 mode and f32 otherwise: one filled in the other
            // mode cannot be read
            let other = if self.act == ActMode::Q8 {
                cache.k.iter().any(|run| !run.is_empty())
            } else {
                cache.k16.iter().any(|run| !run.is_empty())
            };
            if other {
                return Err(ModelError::CacheMode);
            }
            if let Some(&id) = toks.iter().find(|&&id| id as usize >= c.n_vocab) {
                return Err(ModelError::BadToken {
                    id,
                    vocab: c.n_vocab,
                });
            }
            for t in 0..toks.len() {
                row_seq.push(si);
                row_pos.push(cache.len + t);
            }
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|t| t.iter().copied()).collect();
        let t_n = tokens.len();
        let (e, d, dv) = (c.n_embd, c.head_dim, c.head_dim_v);
        let (nh, nkv) = (c.n_head, c.n_head_kv);
        let act = self.act;
        let mm =
            |w: &Weight, x: &[f32], y: &mut [f32], c: &mut ActCache| matmul_cached(w, x, y, act, c);
        let mut sc = std::mem::take(&mut caches[0].scratch);
        let Scratch {
            x,
            h,
            q,
            k,
            v,
            att,
            att_kv,
            v_packed,
            o,
            g,
            u,
            c_h,
            c_att,
            c_g,
        } = &mut sc;
        // llama.cpp's default KV cache and attention operands are f16; Q8 mode follows it
        let q8 = act == ActMode::Q8;
        let r16 = |v: &mut [f32]| {
            if q8 {
                round_f16_slice(v);
            }
        };

        // x = embeddings (T, C); gemma scales them by sqrt(C)
        let x: &mut [f32] = sized(x, t_n * e);
        let emb = self.w(&self.tok_embd);
        for (t, &id) in tokens.iter().enumerate() {
            emb.dequantize_row(id as usize, &mut x[t * e..(t + 1) * e]);
        }
        if c.arch == Arch::Gemma3 {
            let s = (e as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }

        // norms: in Q8 mode with llama.cpp's summation order
        let eps = c.norm_eps;
        let norm = |y: &mut [f32], x: &[f32], w: &[f32]| {
            let c = w.len();
            let one = |y: &mut [f32], x: &[f32]| {
                if q8 {
                    rmsnorm_lanes(y, x, w, eps)
                } else {
                    rmsnorm(y, x, w, eps)
                }
            };
            // rows in parallel for prompts (each row's arithmetic is unchanged)
            if y.len() / c >= 16 {
                let rows = 8;
                for_each_chunk_mut(y, rows * c, |i, ys| {
                    one(ys, &x[i * rows * c..i * rows * c + ys.len()])
                });
            } else {
                one(y, x)
            }
        };
        let norm_inplace = |x: &mut [f32], w: &[f32]| {
            let c = w.len();
            let one = |x: &mut [f32]| {
                if q8 {
                    rmsnorm_lanes_inplace(x, w, eps)
                } else {
                    rmsnorm_inplace(x, w, eps)
                }
            };
            if x.len() / c >= 16 {
                for_each_chunk_mut(x, 8 * c, |_, xs| one(xs));
            } else {
                one(x)
            }
        };

        // RoPE (cos, sin) per token, for global and sliding-window layers
        let ff = self.rope_freqs.as_deref();
        let rope_table = |base: f32, scale: f32| -> Vec<Vec<(f32, f32)>> {
            let inv = rope_inv_freqs(c.rope_dim, base, scale, ff);
            row_pos
                .iter()
                .map(|&p| {
                    if q8 {
                        rope_cos_sin_lanes(p, c.rope_dim, base, scale, ff)
                    } else {
                        inv.iter()
                            .map(|&f| {
                                let (s, c) = (p as f32 * f).sin_cos();
                                (c, s)
                            })
                            .collect()
                    }
                })
                .collect()
        };
        let cs_global = rope_table(c.rope_base, c.rope_scale);
        let cs_swa = rope_table(c.rope_base_swa, 1.0);

        let h: &mut [f32] = sized(h, t_n * e);
        let q: &mut [f32] = sized(q, t_n * nh * d);
        let k: &mut [f32] = sized(k, t_n * nkv * d);
        let v: &mut [f32] = sized(v, t_n * nkv * dv);
        let att: &mut [f32] = sized(att, t_n * nh * dv);
        let o: &mut [f32] = sized(o, t_n * e);
        let g: &mut [f32] = sized(g, t_n * c.n_ff);
        let u: &mut [f32] = sized(u, t_n * c.n_ff);

        for (l, lw) in self.layers.iter().enumerate() {
            // attention block: h = norm(x); q, k, v = h Wq, h Wk, h Wv
            laps.lap(Phase::Other);
            norm(h, x, &lw.attn_norm);
            laps.lap(Phase::Norms);
            c_h.set();
            let (wq, wk, wv) = (self.w(&lw.wq), self.w(&lw.wk), self.w(&lw.wv));
            if q8 {
                // the ends of this layer's K and V runs, where k and v go after the
                // product (eight sequences' appends waited on memory: 0.47 -> 0.29 ms of a
                // 9 ms step, the product 0.07 ms longer)
                for cache in caches.iter() {
                    for run in &cache.k16[l * nkv..(l + 1) * nkv] {
                        llmos_tensor::q8::prefetch_append(run, d);
                    }
                    for run in &cache.v16[l * nkv..(l + 1) * nkv] {
                        llmos_tensor::q8::prefetch_append(run, dv);
                    }
                }
            }
            matmul_cached_multi([&wq, &wk, &wv], h, [&mut *q, &mut *k, &mut *v], act, c_h);
            laps.lap(Phase::Qkv);
            self.lora_add(l, 0, h, q);
            self.lora_add(l, 1, h, k);
            self.lora_add(l, 2, h, v);
            for (buf, bias) in [(&mut *q, &lw.bq), (&mut *k, &lw.bk), (&mut *v, &lw.bv)] {
                if let Some(b) = bias {
                    for row in buf.chunks_exact_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    }
                }
            }
            laps.lap(Phase::Other);
            if let Some(w) = &lw.q_norm {
                norm_inplace(q, w);
            }
            if let Some(w) = &lw.k_norm {
                norm_inplace(k, w);
            }
            laps.lap(Phase::Norms);
            let swa = c.is_swa_layer(l);
            let cs = if swa { &cs_swa } else { &cs_global };
            // rows in parallel for prompts (a few decoding rows cost less than a section)
            if t_n >= 16 {
                for_each_chunk_mut(q, nh * d, |t, qt| rope_cs(qt, d, &cs[t], c.rope_style));
                for_each_chunk_mut(k, nkv * d, |t, kt| rope_cs(kt, d, &cs[t], c.rope_style));
            } else {
                for (t, qt) in q.chunks_exact_mut(nh * d).enumerate() {
                    rope_cs(qt, d, &cs[t], c.rope_style);
                }
                for (t, kt) in k.chunks_exact_mut(nkv * d).enumerate() {
                    rope_cs(kt, d, &cs[t], c.rope_style);
                }
            }
            r16(k);
            r16(v);
            r16(q);
            let mut row0 = 0;
            for (cache, toks) in caches.iter_mut().zip(seqs) {
                for t in row0..row0 + toks.len() {
                    for h in 0..nkv {
                        let kr = &k[(t * nkv + h) * d..(t * nkv + h + 1) * d];
                        let vr = &v[(t * nkv + h) * dv..(t * nkv + h + 1) * dv];
                        if q8 {
                            append_f16(&mut cache.k16[l * nkv + h], kr);
                            append_f16(&mut cache.v16[l * nkv + h], vr);
                        } else {
                            cache.k[l * nkv + h].extend_from_slice(kr);
                            cache.v[l * nkv + h].extend_from_slice(vr);
                        }
                    }
                }
                row0 += toks.len();
            }

            // scores over cached positions, causal, windowed on sliding-window layers. KV
            // head h of sequence seq: in f32 mode the cache's runs; in q8 mode the f16
            // runs, each converted to f32 by the thread that first needs it in this layer
            // and kept in that thread's buffer for its next tasks (the heads of a group,
            // a prompt's rows): half the bytes come from memory
            let halves: Vec<Vec<(&[u16], &[u16])>> = if q8 {
                caches
                    .iter()
                    .map(|cache| {
                        (0..nkv)
                            .map(|h| (&cache.k16[l * nkv + h][..], &cache.v16[l * nkv + h][..]))
                            .collect()
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let floats: Vec<Vec<(&[f32], &[f32])>> = if q8 {
                Vec::new()
            } else {
                caches
                    .iter()
                    .map(|cache| {
                        (0..nkv)
                            .map(|h| (&cache.k[l * nkv + h][..], &cache.v[l * nkv + h][..]))
                            .collect()
                    })
                    .collect()
            };
            laps.lap(Phase::Rope);
            let epoch = KV_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let with_kv = |seq: usize, kvh: usize, f: &mut dyn FnMut(&[f32], &[f32])| {
                if !q8 {
                    let (kc, vc) = floats[seq][kvh];
                    return f(kc, vc);
                }
                KV32.with_borrow_mut(|(key, kf, vf)| {
                    if *key != Some((epoch, seq, kvh)) {
                        let (kh, vh) = halves[seq][kvh];
                        kf.resize(kh.len(), 0.0);
                        f32_from_f16_bits(kh, kf);
                        vf.resize(vh.len(), 0.0);
                        f32_from_f16_bits(vh, vf);
                        *key = Some((epoch, seq, kvh));
                    }
                    f(kf, vf)
                })
            };
            // positions in sequence seq's cache
            let positions = |seq: usize| {
                if q8 {
                    halves[seq][0].1.len() / dv
                } else {
                    floats[seq][0].1.len() / dv
                }
            };
            let window = if swa { c.sliding_window } else { None };
            let group = nh / nkv;
            // first key a query at position qp sees
            let first = |qp: usize| window.map_or(0, |w| (qp + 1).saturating_sub(w));
            // the scores' arithmetic: the softcap, then llama.cpp's softmax in 8-lane chunks
            // and f16 weights, over every cache cell from 0 (masked cells weigh 0)
            let finish_scores = |s: &mut [f32], start: usize| {
                if let Some(cap) = c.attn_softcap {
                    for x in &mut s[start..] {
                        *x = cap * (*x * c.attn_scale / cap).tanh() / c.attn_scale;
                    }
                }
                softmax_scaled_lanes(s, c.attn_scale);
                round_f16_slice(s);
            };
            if q8 && t_n >= 4 {
                // prompts: one task per (KV head, row), every query head of the group at
                // once, so each K and V row is read once for the group, and consecutive
                // tasks reuse one KV head's rows from cache. Same arithmetic per query.
                let att_kv: &mut [f32] = sized(att_kv, t_n * nh * dv);
                // V packed transposed per (sequence, KV head), so the weighted sums are dots
                // of the group's weight rows with V's columns, tiled like the scores (each
                // loaded chunk feeds several FMAs); the pack is a copy of V, small beside
                // the sums that read it (only for sequences with 16 rows or more here: a
                // decoding sequence's one row would not repay a copy of its whole V)
                let packs = caches.len() * nkv;
                if v_packed.len() < packs {
                    v_packed.resize_with(packs, Vec::new);
                }
                let rows_of = positions;
                let packed: Vec<bool> = seqs.iter().map(|s| s.len() >= 16).collect();
                if packed.iter().any(|&p| p) {
                    for_each_chunk_mut(&mut v_packed[..packs], 1, |i, buf| {
                        let (seq, kvh) = (i / nkv, i % nkv);
                        if packed[seq] {
                            with_kv(seq, kvh, &mut |_, vc| {
                                pack_v_cols(vc, dv, rows_of(seq), dv, &mut buf[0]);
                            });
                        }
                    });
                }
                let n32s: Vec<usize> = (0..packs)
                    .map(|i| rows_of(i / nkv).next_multiple_of(32))
                    .collect();
                let v_packed = &v_packed[..packs];
                for_each_chunk_mut(att_kv, group * dv, |i, out| {
                    let (kvh, t) = (i / t_n, i % t_n);
                    let qp = row_pos[t];
                    let (n, start) = (qp + 1, first(qp));
                    let qs = &q[(t * nh + kvh * group) * d..(t * nh + (kvh + 1) * group) * d];
                    let pi = row_seq[t] * nkv + kvh;
                    // packed: weight rows padded with zeros to a multiple of 32
                    let ws = if packed[row_seq[t]] {
                        n.next_multiple_of(32)
                    } else {
                        n
                    };
                    if d == 64 && dv == 64 && !packed[row_seq[t]] {
                        // a decoding row of a batch: 64-wide heads read the f16 cache
                        // directly (a whole run widened for one row was a fifth of the work)
                        let (kh, vh) = halves[row_seq[t]][kvh];
                        // the first two blocks of keys into L2 now; the values (read
                        // 32 rows apart below) and the next task's keys and values, which
                        // this thread most likely runs next, come in while the scores are
                        // made (see dot_rows_lanes_multi_f16): asked for in one burst at
                        // the start, they kept the arithmetic waiting (attention of eight
                        // sequences 13-18% faster at 100-230 positions, 7% at 330)
                        llmos_tensor::q8::prefetch_l2(&kh[start * d..(start + 64).min(n) * d]);
                        let (mut nk, mut nv): (&[u16], &[u16]) = (&[], &[]);
                        if i + 1 < nkv * t_n {
                            let (kn, tn) = ((i + 1) / t_n, (i + 1) % t_n);
                            if !packed[row_seq[tn]] {
                                let sn = first(row_pos[tn]);
                                let (kh, vh) = halves[row_seq[tn]][kn];
                                (nk, nv) = (&kh[sn * d..], &vh[sn * dv..]);
                            }
                        }
                        let fetch: [&[u16]; 3] = [&vh[start * dv..], nk, nv];
                        SCORES.with_borrow_mut(|s| {
                            s.clear();
                            s.resize(group * ws, f32::NEG_INFINITY);
                            let ks = &kh[start * d..];
                            dot_rows_lanes_multi_f16(
                                qs,
                                group,
                                ks,
                                d,
                                n - start,
                                &mut s[start..],
                                ws,
                                &fetch,
                            );
                            for row in s.chunks_exact_mut(ws) {
                                finish_scores(&mut row[..n], start);
                                row[n..].fill(0.0);
                            }
                            weighted_rows_lanes_multi_f16(s, n, vh, dv, dv, out);
                        });
                        return;
                    }
                    with_kv(row_seq[t], kvh, &mut |kc, vc| {
                        SCORES.with_borrow_mut(|s| {
                            s.clear();
                            s.resize(group * ws, f32::NEG_INFINITY);
                            let ks = &kc[start * d..];
                            dot_rows_lanes_multi(qs, group, ks, d, n - start, &mut s[start..], ws);
                            for row in s.chunks_exact_mut(ws) {
                                finish_scores(&mut row[..n], start);
                                row[n..].fill(0.0);
                            }
                            if packed[row_seq[t]] {
                                let vp = &v_packed[pi];
                                lane_dots(s, group, ws, vp, dv, n32s[pi], ws, out, dv);
                            } else {
                                weighted_rows_lanes_multi(s, n, vc, dv, dv, out);
                            }
                        })
                    });
                });
                for (t, row) in att.chunks_exact_mut(nh * dv).enumerate() {
                    for (kvh, heads) in row.chunks_exact_mut(group * dv).enumerate() {
                        let at = (kvh * t_n + t) * group * dv;
                        heads.copy_from_slice(&att_kv[at..at + group * dv]);
                    }
                }
            } else {
                for_each_chunk_mut(att, dv, |i, out| {
                    let (t, head) = (i / nh, i % nh);
                    let kvh = head / group;
                    let qp = row_pos[t];
                    let start = first(qp);
                    let qv = &q[(t * nh + head) * d..(t * nh + head + 1) * d];
                    if q8 && d == 64 && dv == 64 {
                        // 64-wide heads read the f16 cache directly, widened as loaded
                        let (kh, vh) = halves[row_seq[t]][kvh];
                        // K and V into L2 ahead of their first reads (see the batch path)
                        llmos_tensor::q8::prefetch_l2(&kh[start * d..]);
                        llmos_tensor::q8::prefetch_l2(&vh[start * dv..]);
                        SCORES.with_borrow_mut(|s| {
                            s.clear();
                            s.resize(qp + 1, f32::NEG_INFINITY);
                            dot_rows_lanes_f16(qv, &kh[start * d..], d, &mut s[start..]);
                            finish_scores(s, start);
                            weighted_rows_lanes_f16(s, vh, dv, out);
                        });
                        return;
                    }
                    with_kv(row_seq[t], kvh, &mut |kc, vc| {
                        if q8 {
                            SCORES.with_borrow_mut(|s| {
                                s.clear();
                                s.resize(qp + 1, f32::NEG_INFINITY);
                                dot_rows_lanes(qv, &kc[start * d..], d, &mut s[start..]);
                                finish_scores(s, start);
                                weighted_rows_lanes(s, vc, dv, out);
                            });
                            return;
                        }
                        // f32 path: flash-style blocks of keys with an online softmax
                        attend_online(
                            qv,
                            kc,
                            d,
                            vc,
                            dv,
                            start..=qp,
                            c.attn_scale,
                            c.attn_softcap,
                            out,
                        );
                    });
                });
            }
            laps.lap(Phase::Attention);
            c_att.set();
            mm(&self.w(&lw.wo), att, o, c_att);
            laps.lap(Phase::Output);
            self.lora_add(l, 3, att, o);
            if let Some(w) = &lw.post_attn_norm {
                norm_inplace(o, w);
            }
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);

            // feed-forward block: x += down(act(h Wgate) * (h Wup))
            laps.lap(Phase::Other);
            norm(h, x, &lw.ffn_norm);
            laps.lap(Phase::Norms);
            c_h.set();
            let (wg, wu) = (self.w(&lw.gate), self.w(&lw.up));
            matmul_cached_multi([&wg, &wu], h, [&mut *g, &mut *u], act, c_h);
            laps.lap(Phase::GateUp);
            self.lora_add(l, 4, h, g);
            self.lora_add(l, 5, h, u);
            laps.lap(Phase::Other);
            let ff = c.n_ff;
            // four rows per task for prompts; a few decoding rows in one, from four in
            // two (eight sequences: 0.15 -> 0.09 ms a step; the norms' rows, a third as
            // long, lost more to a section than they gained)
            let per = match t_n {
                16.. => ff * 4,
                4.. => ff * t_n.div_ceil(2),
                _ => g.len(),
            };
            for_each_chunk_mut(g, per, |i, gs| {
                let us = &u[i * per..i * per + gs.len()];
                match (c.arch, q8) {
                    (Arch::Gemma3, false) => gs
                        .iter_mut()
                        .zip(us)
                        .for_each(|(a, b)| *a = gelu_tanh(*a) * b),
                    // llama.cpp's CPU GELU is an f16 lookup table
                    (Arch::Gemma3, true) => llmos_tensor::q8::geglu_f16_into(gs, us),
                    (_, false) => gs.iter_mut().zip(us).for_each(|(a, b)| *a = silu(*a) * b),
                    // SiLU 8 lanes at a time (a polynomial exp, as llama.cpp's)
                    (_, true) => llmos_tensor::q8::swiglu_into(gs, us),
                }
            });
            laps.lap(Phase::Activation);
            c_g.set();
            mm(&self.w(&lw.down), g, o, c_g);
            laps.lap(Phase::Down);
            self.lora_add(l, 6, g, o);
            if let Some(w) = &lw.post_ffn_norm {
                norm_inplace(o, w);
            }
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        }
        for (cache, toks) in caches.iter_mut().zip(seqs) {
            cache.len += toks.len();
        }

        // logits of each sequence's last token only, unless all are asked for
        let last: Vec<f32>;
        let rows: &[f32] = if all_logits {
            &x[..]
        } else {
            let mut end = 0;
            last = seqs
                .iter()
                .flat_map(|toks| {
                    end += toks.len();
                    x[(end - 1) * e..end * e].iter().copied()
                })
                .collect();
            &last
        };
        let n_rows = rows.len() / e;
        let hn = &mut h[..rows.len()];
        laps.lap(Phase::Other);
        norm(hn, rows, &self.output_norm);
        laps.lap(Phase::Norms);
        // the logits are the caller's: the one allocation of a decode step
        let mut logits = vec![0f32; n_rows * c.n_vocab];
        c_h.set();
        mm(&self.w(&self.output), hn, &mut logits, c_h);
        laps.lap(Phase::Head);
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
        caches[0].scratch = sc;
        laps.lap(Phase::Other);
        Ok(logits)
    }
}
