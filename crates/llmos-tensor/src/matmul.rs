//! The one matmul entry point: y = x W^T for a weight in any supported storage type.
//!
//! Weights are stored [out, in] (a row per output), activations [T, in], results [T, out].
//! This is the float path: each weight row is dequantized to f32 and dotted with f32
//! activations, so results match a float reference up to summation order. Rows are split
//! across the rayon pool.

use crate::ops::dot_f32;
use crate::q8::{ActMode, QuantRow, quantize_for, vec_dot};
use crate::quant::dequantize_row;
use crate::{DType, TensorError};
use rayon::prelude::*;

/// A borrowed 2-D weight: `rows` rows of `cols` values of type `dtype`.
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Weight<'a> {
    /// Checks the geometry once so the kernels can index without failing.
    pub fn new(
        dtype: DType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, TensorError> {
        if !dtype.is_supported() {
            return Err(TensorError::Unsupported(dtype));
        }
        let rb = dtype
            .row_bytes(cols as u64)
            .ok_or(TensorError::BadRowLength { dtype, n: cols })? as usize;
        let need = rb * rows;
        if data.len() < need {
            return Err(TensorError::ShortData {
                dtype,
                need,
                have: data.len(),
            });
        }
        Ok(Weight {
            dtype,
            data: &data[..need],
            rows,
            cols,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// Bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row(r), &mut out[..self.cols])
            .expect("geometry checked in Weight::new");
    }
}

/// Rows per parallel task: enough tasks to balance two or more threads, not so many that
/// scheduling dominates.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (rows / (threads * 8)).clamp(4, 512)
}

/// Checks x [T, cols] and y [T, rows] against the weight and returns T.
fn token_count(w: &Weight, x: &[f32], y: &[f32]) -> usize {
    let t = x.len() / w.cols;
    assert_eq!(
        x.len(),
        t * w.cols,
        "activation length is not a multiple of the weight's columns"
    );
    assert_eq!(y.len(), t * w.rows, "output length must be T x rows");
    t
}

/// Runs `row(scratch, r, out)` for every weight row r in parallel, `out` being that row's
/// results for all T tokens, then writes them to y in token-major order. `init` makes one
/// scratch value per task.
fn by_rows<S>(
    w: &Weight,
    t: usize,
    y: &mut [f32],
    init: impl Fn() -> S + Sync + Send,
    row: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) {
    if t == 0 {
        return;
    }
    let chunk = chunk_rows(w.rows);
    let mut yt = vec![0f32; w.rows * t];
    yt.par_chunks_mut(chunk * t)
        .enumerate()
        .for_each(|(ci, ys)| {
            let mut scratch = init();
            for (j, out) in ys.chunks_exact_mut(t).enumerate() {
                row(&mut scratch, ci * chunk + j, out);
            }
        });
    transpose_into(y, &yt, w.rows, t);
}

/// y[t, r] = yt[r, t]: per-row results back to token-major order.
fn transpose_into(y: &mut [f32], yt: &[f32], rows: usize, t: usize) {
    for r in 0..rows {
        for ti in 0..t {
            y[ti * rows + r] = yt[r * t + ti];
        }
    }
}

/// y[t, r] = sum_i x[t, i] * W[r, i] for `t` in 0..T, where T = x.len() / W.cols.
pub fn matmul(w: &Weight, x: &[f32], y: &mut [f32]) {
    let k = w.cols;
    let t = token_count(w, x, y);
    if t == 0 {
        return;
    }
    if t == 1 {
        // one token: rows write straight into y, no transpose
        let chunk = chunk_rows(w.rows);
        y.par_chunks_mut(chunk).enumerate().for_each(|(ci, ys)| {
            let mut buf = vec![0f32; k];
            for (j, out) in ys.iter_mut().enumerate() {
                w.dequantize_row(ci * chunk + j, &mut buf);
                *out = dot_f32(&buf, x);
            }
        });
        return;
    }
    // several tokens: dequantize each row once and reuse it for every token
    by_rows(
        w,
        t,
        y,
        || vec![0f32; k],
        |buf, r, out| {
            w.dequantize_row(r, buf);
            for (ti, o) in out.iter_mut().enumerate() {
                *o = dot_f32(buf, &x[ti * k..(ti + 1) * k]);
            }
        },
    );
}

/// Like [`matmul`], with activations meeting the weights as `mode` says. In
/// [`ActMode::Q8`] each activation row is quantized once, then every weight row is dotted
/// with it in integer arithmetic.
pub fn matmul_with(w: &Weight, x: &[f32], y: &mut [f32], mode: ActMode) {
    if mode == ActMode::F32 || matches!(w.dtype, DType::F32) {
        return matmul(w, x, y);
    }
    let t = token_count(w, x, y);
    let acts: Vec<QuantRow> = x
        .chunks_exact(w.cols)
        .map(|r| quantize_for(w.dtype, r))
        .collect();
    by_rows(
        w,
        t,
        y,
        || (),
        |_, r, out| {
            let row = w.row(r);
            for (o, a) in out.iter_mut().zip(&acts) {
                *o = vec_dot(w.dtype, row, a);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_f32_matches_naive_for_one_and_many_tokens() {
        let (rows, cols) = (37, 64);
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let bytes: Vec<u8> = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let w = Weight::new(DType::F32, &bytes, rows, cols).unwrap();
        for t in [1usize, 3] {
            let x: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.3).sin()).collect();
            let mut y = vec![0f32; t * rows];
            matmul(&w, &x, &mut y);
            for ti in 0..t {
                for r in 0..rows {
                    let naive: f32 = (0..cols).map(|i| wf[r * cols + i] * x[ti * cols + i]).sum();
                    assert!((y[ti * rows + r] - naive).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn weight_rejects_short_data_and_ragged_rows() {
        assert!(Weight::new(DType::Q8_0, &[0u8; 33], 1, 32).is_err());
        assert!(Weight::new(DType::Q8_0, &[0u8; 34], 1, 31).is_err());
        assert!(Weight::new(DType::Q8_1, &[0u8; 36], 1, 32).is_err());
    }
}
