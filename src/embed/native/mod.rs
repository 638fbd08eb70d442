//! The native CPU BERT encoder: the forward pass for inference only, written for this job.
//! candle loads the weights; from there, query/key/value are fused into one layer, weights
//! are packed once for the few-row kernels in `gemm`, sequences of a batch are packed end to
//! end (no padding, so no mask and no wasted rows), and mean pooling and normalisation
//! happen in place.

pub mod ops;

use crate::config::Precision;
use crate::kernels::gemm::Linear;
use crate::kernels::isa::{Isa, bf16_supported};
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

impl Layer {
    /// Encoder layer `i`, with query, key and value fused into one layer.
    fn load(w: &Weights, i: usize, hidden: usize, inter: usize) -> Result<Layer, String> {
        let l = format!("encoder.layer.{i}");
        let qkv_names = [
            format!("{l}.attention.self.query"),
            format!("{l}.attention.self.key"),
            format!("{l}.attention.self.value"),
        ];
        let qkv_refs: Vec<&str> = qkv_names.iter().map(String::as_str).collect();
        Ok(Layer {
            qkv: w.linear(&qkv_refs, hidden, hidden)?,
            attn_out: w.linear(&[&format!("{l}.attention.output.dense")], hidden, hidden)?,
            attn_norm: w.norm(&format!("{l}.attention.output.LayerNorm"), hidden)?,
            up: w.linear(&[&format!("{l}.intermediate.dense")], inter, hidden)?,
            down: w.linear(&[&format!("{l}.output.dense")], hidden, inter)?,
            out_norm: w.norm(&format!("{l}.output.LayerNorm"), hidden)?,
        })
    }
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

impl Scratch {
    /// Zeroed activations for `tokens` rows (the attention scores size themselves).
    fn size_for(&mut self, tokens: usize, hidden: usize, intermediate: usize) {
        for (buffer, len) in [
            (&mut self.x, tokens * hidden),
            (&mut self.qkv, tokens * 3 * hidden),
            (&mut self.ctx, tokens * hidden),
            (&mut self.tmp, tokens * hidden),
            (&mut self.up, tokens * intermediate),
        ] {
            buffer.clear();
            buffer.resize(len, 0.0);
        }
    }
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
    /// Maps the checkpoint; its tensors may or may not be under `bert.`.
    fn open(path: &Path, precision: Precision) -> Result<Weights, String> {
        // SAFETY: the file is memory-mapped read-only while loading; see `Encoder::load_files`.
        let file = unsafe { MmapedSafetensors::new(path) }.map_err(|e| e.to_string())?;
        let prefix = if file.get("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        Ok(Weights {
            file,
            prefix,
            precision,
        })
    }

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
        let precision = if precision == Precision::Bf16 && !bf16_supported() {
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
        let w = Weights::open(path, precision)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            layers.push(Layer::load(&w, i, hidden, config.intermediate_size)?);
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

    /// One packed forward pass using scratch buffers `slot` (0 or 1): the embeddings, then
    /// each layer's attention and feed-forward blocks, then pooling.
    fn forward(
        &self,
        sequences: &[&[u32]],
        slot: usize,
        team: Option<&Team>,
    ) -> Result<Vec<Vec<f32>>, String> {
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        // Reuse the previous call's buffers (no page faults on the hot path); a concurrent
        // caller, which the inference thread never is, gets fresh ones.
        let mut fresh = Scratch::default();
        let mut guard = self.scratch[slot.min(1)].try_lock();
        let scratch: &mut Scratch = match guard.as_deref_mut() {
            Ok(reused) => reused,
            Err(_) => &mut fresh,
        };
        scratch.size_for(total, self.hidden, self.intermediate());
        let pass = Pass {
            model: self,
            sequences,
            total,
            team,
        };
        pass.embeddings(&mut scratch.x)?;
        for layer in &self.layers {
            pass.attention(layer, scratch)?;
            pass.feed_forward(layer, scratch)?;
        }
        Ok(pass.pool(&scratch.x))
    }

    /// Width of the feed-forward layer (0 without layers).
    fn intermediate(&self) -> usize {
        self.layers.first().map_or(0, |l| l.up.out_features())
    }
}

/// One forward pass over a packed batch: its steps, in the order `NativeBert::forward` runs
/// them. Every activation has one row per token of the batch.
struct Pass<'a> {
    model: &'a NativeBert,
    sequences: &'a [&'a [u32]],
    /// Tokens in the batch.
    total: usize,
    /// Shares each large layer between two threads.
    team: Option<&'a Team>,
}

impl Pass<'_> {
    /// Word + position + token type 0 for every token, then layer norm.
    fn embeddings(&self, x: &mut [f32]) -> Result<(), String> {
        let m = self.model;
        let h = m.hidden;
        let mut row = 0;
        for seq in self.sequences {
            if seq.len() > m.max_positions {
                return Err(format!(
                    "a sequence of {} tokens exceeds the model's {}",
                    seq.len(),
                    m.max_positions
                ));
            }
            for (pos, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= m.vocab {
                    return Err(format!("token id {id} is outside the vocabulary"));
                }
                let out = &mut x[row * h..(row + 1) * h];
                let word = &m.word[id * h..(id + 1) * h];
                let position = &m.position[pos * h..(pos + 1) * h];
                for (((o, w), p), t) in out
                    .iter_mut()
                    .zip(word)
                    .zip(position)
                    .zip(&m.token_type[..h])
                {
                    *o = w + p + t;
                }
                row += 1;
            }
        }
        ops::layer_norm(x, h, &m.embed_norm.gamma, &m.embed_norm.beta, m.eps);
        Ok(())
    }

    /// Self-attention within each sequence, projected and added back:
    /// `x = norm(x + out(attention(qkv(x))))`.
    fn attention(&self, layer: &Layer, s: &mut Scratch) -> Result<(), String> {
        let m = self.model;
        let h = m.hidden;
        let head_dim = h / m.heads;
        self.linear(&layer.qkv, &s.x, &mut s.qkv)?;
        let mut start = 0;
        for seq in self.sequences {
            let len = seq.len();
            ops::attention(
                &s.qkv[start * 3 * h..(start + len) * 3 * h],
                len,
                m.heads,
                head_dim,
                &mut s.ctx[start * h..(start + len) * h],
                &mut s.scores,
            );
            start += len;
        }
        self.linear(&layer.attn_out, &s.ctx, &mut s.tmp)?;
        ops::add_assign(&mut s.x, &s.tmp);
        let norm = &layer.attn_norm;
        ops::layer_norm(&mut s.x, h, &norm.gamma, &norm.beta, m.eps);
        Ok(())
    }

    /// The feed-forward block, added back: `x = norm(x + down(gelu(up(x))))`.
    fn feed_forward(&self, layer: &Layer, s: &mut Scratch) -> Result<(), String> {
        self.linear(&layer.up, &s.x, &mut s.up)?;
        ops::gelu(&mut s.up);
        self.linear(&layer.down, &s.up, &mut s.tmp)?;
        ops::add_assign(&mut s.x, &s.tmp);
        let norm = &layer.out_norm;
        let m = self.model;
        ops::layer_norm(&mut s.x, m.hidden, &norm.gamma, &norm.beta, m.eps);
        Ok(())
    }

    /// `y = layer(x)` for every token, with the model's kernel.
    fn linear(&self, layer: &Linear, x: &[f32], y: &mut [f32]) -> Result<(), String> {
        layer
            .forward(self.model.isa, x, self.total, y, self.team)
            .then_some(())
            .ok_or_else(|| "internal shape mismatch in the encoder".to_string())
    }

    /// Mean pooling over each sequence's tokens, then L2 normalisation.
    fn pool(&self, x: &[f32]) -> Vec<Vec<f32>> {
        let h = self.model.hidden;
        let mut out = Vec::with_capacity(self.sequences.len());
        let mut start = 0;
        for seq in self.sequences {
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
        out
    }
}
