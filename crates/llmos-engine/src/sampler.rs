//! Token sampling: repetition penalty, top-k, top-p, min-p, temperature, then a draw from
//! a seeded generator (the order llama.cpp's default chain uses). Temperature 0 is greedy.

use llmos_tensor::q8::exp_scaled_into;

/// SplitMix64: small, fast, and its whole state is one u64 passed around explicitly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// 0 (or below) means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables; > 1 makes recently seen tokens less likely.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

pub struct Sampler {
    pub config: SamplerConfig,
    rng: Rng,
}

/// Index of the largest value (the first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        let rng = Rng::new(config.seed);
        Sampler { config, rng }
    }

    /// Picks the next token from `logits` (modified in place); `history` is every token so
    /// far, prompt included, for the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.config;
        if c.repeat_penalty != 1.0 && c.repeat_last_n > 0 {
            let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if seen.insert(t)
                    && let Some(l) = logits.get_mut(t as usize)
                {
                    // CTRL-style: shrink positive logits, grow negative ones
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        if (c.top_k == 0 || c.top_k >= logits.len()) && c.top_p >= 1.0 && c.min_p <= 0.0 {
            // nothing to cut: draw from the whole distribution in id order, no sort (the
            // API's default settings; a sort of a 50K-262K vocabulary per token is costly)
            // the exponentials 8 at a time (a scalar exp per id was 6% of a step of eight
            // sequences, each one a 49K vocabulary)
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut e = vec![0f32; logits.len()];
            let total = exp_scaled_into(logits, m, 1.0 / c.temperature, &mut e);
            let r = self.rng.next_f32() * total;
            let mut cum = 0.0;
            let mut last = 0;
            for (i, &p) in e.iter().enumerate() {
                if p > 0.0 {
                    last = i;
                    cum += p;
                    if r < cum {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        // candidates sorted by logit, descending (ties by id, for determinism)
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let keep = if c.top_k > 0 {
            c.top_k.min(cand.len())
        } else {
            cand.len()
        };
        let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if keep < cand.len() {
            cand.select_nth_unstable_by(keep - 1, cmp);
            cand.truncate(keep);
        }
        cand.sort_by(cmp);
        // probabilities at temperature 1 for the top-p / min-p cuts
        let probs = |cand: &[(u32, f32)], temp: f32| -> Vec<f32> {
            let m = cand[0].1;
            let e: Vec<f32> = cand.iter().map(|&(_, l)| ((l - m) / temp).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        if c.top_p < 1.0 {
            let p = probs(&cand, 1.0);
            let mut cum = 0.0;
            let mut n = cand.len();
            for (i, pi) in p.iter().enumerate() {
                cum += pi;
                if cum >= c.top_p {
                    n = i + 1;
                    break;
                }
            }
            cand.truncate(n.max(1));
        }
        if c.min_p > 0.0 {
            let p = probs(&cand, 1.0);
            let cut = p[0] * c.min_p;
            let n = p.iter().take_while(|&&pi| pi >= cut).count();
            cand.truncate(n.max(1));
        }
        let p = probs(&cand, c.temperature);
        let r = self.rng.next_f32();
        let mut cum = 0.0;
        for (i, pi) in p.iter().enumerate() {
            cum += pi;
            if r < cum {
                return cand[i].0;
            }
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    /// With nothing cut, draws follow the softmax: frequencies within a few percent.
    #[test]
    fn uncut_sampling_follows_the_softmax() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        });
        let l = [0.0f32, 1.0, 2.0, f32::NEG_INFINITY];
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[s.sample(&mut l.clone(), &[]) as usize] += 1;
        }
        assert_eq!(counts[3], 0, "a masked token is never drawn");
        for i in 0..3 {
            let want = l[i].exp() / z;
            let got = counts[i] as f32 / n as f32;
            assert!((got - want).abs() < 0.02, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn top_k_restricts_to_the_k_best() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 10.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        });
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            seen.insert(s.sample(&mut logits(), &[]));
        }
        assert_eq!(seen, [1, 4].into_iter().collect());
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // p(0)/p(1) = e^-2 ~ 0.135 < 0.2: token 0 and 3 must never be drawn
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            ..Default::default()
        });
        for _ in 0..500 {
            let t = s.sample(&mut logits(), &[]);
            assert!(t != 0 && t != 3, "{t}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // p = (~0.5, ~0.5, tiny, tiny): a nucleus of 0.4 is token 0 alone (ties go to the
        // lower id), one of 0.6 needs both, and never the tiny ones
        let l = vec![10.0, 10.0, 0.0, 0.0];
        let draw = |top_p: f32| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p,
                min_p: 0.0,
                ..Default::default()
            });
            (0..300)
                .map(|_| s.sample(&mut l.clone(), &[]))
                .collect::<std::collections::HashSet<_>>()
        };
        assert_eq!(draw(0.4), [0].into_iter().collect());
        assert_eq!(draw(0.6), [0, 1].into_iter().collect());
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            });
            (0..64)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 1.5,
            ..SamplerConfig::greedy()
        });
        // token 1 (3.0) seen -> 2.0; token 4 (2.9) wins
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 3,
            ..Default::default()
        });
        let l = vec![0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| s.sample(&mut l.clone(), &[]) == 1)
            .count();
        let frac = ones as f32 / n as f32;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }
}
