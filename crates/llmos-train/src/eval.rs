//! Evaluations of a model file. `bits`: how many bits the model needs to encode a token
//! sequence (the "compression" view of a language model, compared in bits per byte with
//! gzip, xz and zstd by `llmos eval bpb`).

use llmos_model::{Model, ModelError};

/// Total bits (-log2 p) the model assigns to `tokens`, every token scored exactly once.
///
/// The first window starts the text; each later window of `ctx` tokens repeats the last
/// ctx / 2 tokens scored as context and scores the rest, so every token after the first
/// window has at least ctx / 2 tokens of context. With `bos` the first token is scored
/// after it; without, it costs log2(vocab) bits (a uniform guess). `progress` receives the
/// number of tokens done.
pub fn bits(
    model: &Model,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    progress: &mut dyn FnMut(usize),
) -> Result<f64, ModelError> {
    let n = tokens.len();
    let vocab = model.config.n_vocab;
    if n == 0 {
        return Ok(0.0);
    }
    let ctx = ctx.max(2);
    let half = ctx / 2;
    let mut cache = model.new_cache(ctx);
    let mut total = 0f64;
    let nll = |row: &[f32], target: u32| nll(row, target) / std::f64::consts::LN_2;
    // the first window, from the start (after BOS when the model has one; BOS takes a
    // position, so the window holds one token less)
    let off = usize::from(bos.is_some());
    let first_len = (ctx - off).min(n);
    let first: Vec<u32> = bos
        .into_iter()
        .chain(tokens[..first_len].iter().copied())
        .collect();
    model.truncate_cache(&mut cache, 0);
    let logits = model.forward(&mut cache, &first, true)?;
    if bos.is_none() {
        total += (vocab as f64).log2();
    }
    for i in (1 - off)..first_len {
        // logits row (i + off - 1) predicts tokens[i]
        let row = &logits[(i + off - 1) * vocab..(i + off) * vocab];
        total += nll(row, tokens[i]);
    }
    let mut done = first_len;
    progress(done);
    // then windows of ctx tokens whose first half is context and second half is scored
    while done < n {
        let start = done - half.min(done);
        let end = (start + ctx).min(n);
        model.truncate_cache(&mut cache, 0);
        let logits = model.forward(&mut cache, &tokens[start..end], true)?;
        for (i, &tok) in tokens.iter().enumerate().take(end).skip(done) {
            let r = i - start - 1;
            total += nll(&logits[r * vocab..(r + 1) * vocab], tok);
        }
        done = end;
        progress(done);
    }
    Ok(total)
}

/// -ln softmax(row)[target], summed in f64.
pub fn nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - row[target as usize] as f64
}
