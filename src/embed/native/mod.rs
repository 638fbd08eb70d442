//! The native CPU BERT encoder: the forward pass for inference only, written for this job.
//! candle loads the weights; from there, query/key/value are fused into one layer, weights
//! are packed once for the few-row kernels in `gemm`, sequences of a batch are packed end to
//! end (no padding, so no mask and no wasted rows), and mean pooling and normalisation
//! happen in place.

pub mod ops;

use crate::config::Precision;
use crate::kernels::gemm::{self, Isa, Linear};
use crate::kernels::team::Team;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};
use std::path::Path;

/// Batches with fewer tokens run as one pass: two passes would not pay for the split.
const SPLIT_MIN_TOKENS: usize = 48;

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// Buffers of one forward pass, kept between calls.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
}

pub struct NativeBert {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    eps: f32,
    isa: Isa,
    precision: Precision,
    /// One set of buffers per half of a split batch.
    scratch: [std::sync::Mutex<Scratch>; 2],
    /// Shares each layer of a single sequence between two threads.
    team: Option<Team>,
}

struct Weights {
    file: MmapedSafetensors,
    prefix: &'static str,
    precision: Precision,
}

impl Weights {
    fn get(&self, name: &str, len: usize) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self
            .file
            .load(&full, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor {full}: {e}"))?;
        if tensor.len() != len {
            return Err(format!(
                "tensor {full} has {} values, expected {len}",
                tensor.len()
            ));
        }
        Ok(tensor)
    }

    fn norm(&self, name: &str, hidden: usize) -> Result<Norm, String> {
        Ok(Norm {
            gamma: self.get(&format!("{name}.weight"), hidden)?,
            beta: self.get(&format!("{name}.bias"), hidden)?,
        })
    }

    fn linear(&self, names: &[&str], n_each: usize, k: usize) -> Result<Linear, String> {
        let mut weight = Vec::with_capacity(names.len() * n_each * k);
        let mut bias = Vec::with_capacity(names.len() * n_each);
        for name in names {
            weight.extend(self.get(&format!("{name}.weight"), n_each * k)?);
            bias.extend(self.get(&format!("{name}.bias"), n_each)?);
        }
        let n = names.len() * n_each;
        let layer = match self.precision {
            Precision::F32 => Linear::new(&weight, &bias, n, k),
            Precision::Bf16 => Linear::new_bf16(&weight, &bias, n, k),
        };
        layer.ok_or_else(|| format!("layer {} has the wrong shape", names.join("+")))
    }
}

impl NativeBert {
    /// Loads a BERT checkpoint for inference with the best kernel this CPU has.
    /// bf16 falls back to f32 (with a warning) on CPUs without AVX512_BF16.
    pub fn load(
        weights: &Path,
        config: &BertConfig,
        precision: Precision,
    ) -> Result<NativeBert, String> {
        NativeBert::load_with(weights, config, Isa::detect(), precision)
    }

    /// Loads with a given f32 kernel (tests force each one the CPU supports).
    pub fn load_with(
        path: &Path,
        config: &BertConfig,
        isa: Isa,
        precision: Precision,
    ) -> Result<NativeBert, String> {
        let precision = if precision == Precision::Bf16 && !gemm::bf16_supported() {
            tracing::warn!("encoder.precision is bf16 but this CPU lacks AVX512_BF16; using f32");
            Precision::F32
        } else {
            precision
        };
        if !matches!(config.hidden_act, HiddenAct::Gelu) {
            return Err("the native encoder supports BERT models with exact GELU only".into());
        }
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(format!(
                "hidden size {hidden} does not split into {heads} heads"
            ));
        }
        // SAFETY: the file is memory-mapped read-only while loading; see `Encoder::load_files`.
        let file = unsafe { MmapedSafetensors::new(path) }.map_err(|e| e.to_string())?;
        let prefix = if file.get("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let w = Weights {
            file,
            prefix,
            precision,
        };
        let inter = config.intermediate_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            let qkv_names = [
                format!("{l}.attention.self.query"),
                format!("{l}.attention.self.key"),
                format!("{l}.attention.self.value"),
            ];
            let qkv_refs: Vec<&str> = qkv_names.iter().map(String::as_str).collect();
            layers.push(Layer {
                qkv: w.linear(&qkv_refs, hidden, hidden)?,
                attn_out: w.linear(&[&format!("{l}.attention.output.dense")], hidden, hidden)?,
                attn_norm: w.norm(&format!("{l}.attention.output.LayerNorm"), hidden)?,
                up: w.linear(&[&format!("{l}.intermediate.dense")], inter, hidden)?,
                down: w.linear(&[&format!("{l}.output.dense")], hidden, inter)?,
                out_norm: w.norm(&format!("{l}.output.LayerNorm"), hidden)?,
            });
        }
        Ok(NativeBert {
            word: w.get(
                "embeddings.word_embeddings.weight",
                config.vocab_size * hidden,
            )?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings * hidden,
            )?,
            token_type: w.get(
                "embeddings.token_type_embeddings.weight",
                config.type_vocab_size * hidden,
            )?,
            embed_norm: w.norm("embeddings.LayerNorm", hidden)?,
            layers,
            hidden,
            heads,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            isa,
            precision,
            scratch: Default::default(),
            team: Team::new(),
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Mean-pooled, L2-normalised embeddings of token sequences. A batch is cut in two
    /// halves of about equal tokens that run as whole forward passes on the two cores (no
    /// synchronisation per layer); a single sequence shares each large layer instead.
    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        if sequences.len() < 2 || total < SPLIT_MIN_TOKENS {
            return self.forward(sequences, 0, self.team.as_ref());
        }
        let mut seen = 0;
        let cut = sequences
            .iter()
            .position(|s| {
                seen += s.len();
                2 * seen >= total
            })
            .map_or(1, |i| (i + 1).clamp(1, sequences.len() - 1));
        let (first, second) = sequences.split_at(cut);
        let (a, b) = rayon::join(
            || self.forward(first, 0, None),
            || self.forward(second, 1, None),
        );
        let mut out = a?;
        out.extend(b?);
        Ok(out)
    }

    /// One packed forward pass using scratch buffers `slot` (0 or 1).
    fn forward(
        &self,
        sequences: &[&[u32]],
        slot: usize,
        team: Option<&Team>,
    ) -> Result<Vec<Vec<f32>>, String> {
        let h = self.hidden;
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        // Reuse the previous call's buffers (no page faults on the hot path); a concurrent
        // caller, which the inference thread never is, gets fresh ones.
        let mut fresh = Scratch::default();
        let mut guard = self.scratch[slot.min(1)].try_lock();
        let scratch: &mut Scratch = match guard.as_deref_mut() {
            Ok(reused) => reused,
            Err(_) => &mut fresh,
        };
        let inter = self.layers.first().map_or(0, |l| l.up.out_features());
        let Scratch {
            x,
            qkv,
            ctx,
            tmp,
            up,
            scores,
        } = scratch;
        for (buffer, len) in [
            (&mut *x, total * h),
            (&mut *qkv, total * 3 * h),
            (&mut *ctx, total * h),
            (&mut *tmp, total * h),
            (&mut *up, total * inter),
        ] {
            buffer.clear();
            buffer.resize(len, 0.0);
        }
        // Embeddings: word + position + token type 0, then layer norm.
        let mut row = 0;
        for seq in sequences {
            if seq.len() > self.max_positions {
                return Err(format!(
                    "a sequence of {} tokens exceeds the model's {}",
                    seq.len(),
                    self.max_positions
                ));
            }
            for (pos, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(format!("token id {id} is outside the vocabulary"));
                }
                let out = &mut x[row * h..(row + 1) * h];
                let word = &self.word[id * h..(id + 1) * h];
                let position = &self.position[pos * h..(pos + 1) * h];
                for (((o, w), p), t) in out
                    .iter_mut()
                    .zip(word)
                    .zip(position)
                    .zip(&self.token_type[..h])
                {
                    *o = w + p + t;
                }
                row += 1;
            }
        }
        ops::layer_norm(
            x,
            h,
            &self.embed_norm.gamma,
            &self.embed_norm.beta,
            self.eps,
        );

        let head_dim = h / self.heads;
        let shape_err = || "internal shape mismatch in the encoder".to_string();
        for layer in &self.layers {
            layer
                .qkv
                .forward(self.isa, x, total, qkv, team)
                .then_some(())
                .ok_or_else(shape_err)?;
            let mut start = 0;
            for seq in sequences {
                let len = seq.len();
                ops::attention(
                    &qkv[start * 3 * h..(start + len) * 3 * h],
                    len,
                    self.heads,
                    head_dim,
                    &mut ctx[start * h..(start + len) * h],
                    scores,
                );
                start += len;
            }
            layer
                .attn_out
                .forward(self.isa, ctx, total, tmp, team)
                .then_some(())
                .ok_or_else(shape_err)?;
            ops::add_assign(x, tmp);
            ops::layer_norm(
                x,
                h,
                &layer.attn_norm.gamma,
                &layer.attn_norm.beta,
                self.eps,
            );
            layer
                .up
                .forward(self.isa, x, total, up, team)
                .then_some(())
                .ok_or_else(shape_err)?;
            ops::gelu(up);
            layer
                .down
                .forward(self.isa, up, total, tmp, team)
                .then_some(())
                .ok_or_else(shape_err)?;
            ops::add_assign(x, tmp);
            ops::layer_norm(x, h, &layer.out_norm.gamma, &layer.out_norm.beta, self.eps);
        }

        // Mean pooling over each sequence's tokens, then L2 normalisation.
        let mut out = Vec::with_capacity(sequences.len());
        let mut start = 0;
        for seq in sequences {
            let len = seq.len().max(1);
            let mut v = vec![0.0f32; h];
            for r in start..start + seq.len() {
                ops::add_assign(&mut v, &x[r * h..(r + 1) * h]);
            }
            let inv_len = 1.0 / len as f32;
            v.iter_mut().for_each(|a| *a *= inv_len);
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= norm);
            out.push(v);
            start += seq.len();
        }
        Ok(out)
    }
}
