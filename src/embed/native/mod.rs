//! The native CPU BERT encoder: the forward pass for inference only, written for this job.
//! candle loads the weights (`weights`); from there, query/key/value are fused into one
//! layer, weights are packed once for the few-row kernels in `gemm` (float32, bfloat16 or
//! int8), sequences of a batch are packed end to end (no padding, so no mask and no wasted
//! rows), GELU runs inside the up-projection, and mean pooling and normalisation happen in
//! place. A batch is split by sequences among the encoder's threads; a single sequence
//! shares each large layer among them by output columns. Neither split changes a result.

pub mod ops;
mod weights;

use crate::config::Precision;
use crate::kernels::gemm::{Int8Isa, Linear};
use crate::kernels::isa::{Isa, bf16_supported};
use crate::kernels::team::Team;
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use weights::{Layer, Norm, QuantizedCache, Weights};

/// Tokens each part of a split batch should have at least: below that, a part's hand-over
/// costs more than it saves.
const PART_MIN_TOKENS: usize = 24;

/// The embeddings of a part of a batch, or why it failed.
type Embedded = Result<Vec<Vec<f32>>, String>;

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

/// How to load the encoder: the kernels, the number format, the threads and where int8
/// weights are cached.
#[derive(Debug, Clone)]
pub struct Options {
    pub isa: Isa,
    pub precision: Precision,
    pub threads: usize,
    /// The directory of the quantized-weights cache and the checkpoint's SHA-256.
    pub quantized_cache: Option<(PathBuf, String)>,
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
    /// One set of buffers per part of a split batch.
    scratch: Vec<Mutex<Scratch>>,
    /// The helper threads (none with one thread).
    team: Option<Team>,
}

impl NativeBert {
    /// Loads a BERT checkpoint with the best kernels this CPU has and one thread per core.
    pub fn load(
        weights: &Path,
        config: &BertConfig,
        precision: Precision,
    ) -> Result<NativeBert, String> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let options = Options {
            isa: Isa::detect(),
            precision,
            threads,
            quantized_cache: None,
        };
        NativeBert::load_with(weights, config, &options)
    }

    /// Loads with given options (tests force each kernel the CPU supports, and thread
    /// counts). bf16 and int8 fall back to f32 (with a warning) on CPUs without the
    /// instructions they need.
    pub fn load_with(
        path: &Path,
        config: &BertConfig,
        options: &Options,
    ) -> Result<NativeBert, String> {
        let int8 = Int8Isa::detect();
        let precision = match options.precision {
            Precision::Bf16 if !bf16_supported() => {
                tracing::warn!(
                    "encoder.precision is bf16 but this CPU lacks AVX512_BF16; using f32"
                );
                Precision::F32
            }
            Precision::Int8 if int8.is_none() => {
                tracing::warn!(
                    "encoder.precision is int8 but this CPU has neither AVX2 nor VNNI; using f32"
                );
                Precision::F32
            }
            other => other,
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
        let cache = options
            .quantized_cache
            .as_ref()
            .filter(|_| precision == Precision::Int8)
            .map(|(dir, sha)| QuantizedCache::new(dir, sha));
        let (inter, layer_count) = (config.intermediate_size, config.num_hidden_layers);
        let shapes: Vec<(usize, usize)> = (0..layer_count)
            .flat_map(|_| {
                [
                    (3 * hidden, hidden),
                    (hidden, hidden),
                    (inter, hidden),
                    (hidden, inter),
                ]
            })
            .collect();
        let w = Weights::open(
            path,
            precision,
            int8,
            cache.as_ref().map(|c| (c, &shapes[..])),
        )?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            layers.push(Layer::load(&w, i, hidden, config.intermediate_size)?);
        }
        if let Some(cache) = cache.filter(|_| !w.all_cached.get())
            && let Err(err) = cache.store(&layers)
        {
            tracing::warn!(file = %cache.path().display(), error = %err, "could not cache the int8 weights");
        }
        let threads = options.threads.max(1);
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
            isa: options.isa,
            precision,
            scratch: (0..threads).map(|_| Mutex::default()).collect(),
            team: Team::new(threads),
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The int8 kernel, when the layers are int8.
    pub fn int8_isa(&self) -> Option<Int8Isa> {
        self.layers.first().and_then(|l| l.qkv.int8_isa())
    }

    /// Threads the forward pass runs on (the caller's included).
    pub fn threads(&self) -> usize {
        self.team.as_ref().map_or(1, Team::threads)
    }

    /// Bytes the encoder layers' packed weights take.
    pub fn layer_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(Layer::linears)
            .map(Linear::weight_bytes)
            .sum()
    }

    /// Mean-pooled, L2-normalised embeddings of token sequences. A batch is cut into up to
    /// one part per thread, of about equal tokens, that run as whole forward passes (no
    /// synchronisation per layer); a single sequence shares each large layer instead.
    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        let parts = self
            .threads()
            .min(sequences.len())
            .min(total / PART_MIN_TOKENS);
        let Some(team) = self.team.as_ref().filter(|_| parts > 1) else {
            return self.forward(sequences, 0, self.team.as_ref());
        };
        let groups = split_by_tokens(sequences, total, parts);
        let results: Vec<Mutex<Option<Embedded>>> =
            groups.iter().map(|_| Mutex::new(None)).collect();
        team.run(groups.len(), &|i| {
            let result = self.forward(groups[i], i, None);
            *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        });
        let mut out = Vec::with_capacity(sequences.len());
        for slot in results {
            let result = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            out.extend(result.ok_or("a part of the batch was not run")??);
        }
        Ok(out)
    }

    /// One packed forward pass using scratch buffers `slot`: the embeddings, then each
    /// layer's attention and feed-forward blocks, then pooling.
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
        let mut guard = self.scratch.get(slot).map(Mutex::try_lock);
        let scratch: &mut Scratch = match guard.as_mut() {
            Some(Ok(reused)) => reused,
            _ => &mut fresh,
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

/// Cuts `sequences` (holding `total` tokens) into `parts` runs of consecutive sequences
/// with about equal tokens each, none empty.
fn split_by_tokens<'a>(
    sequences: &'a [&'a [u32]],
    total: usize,
    parts: usize,
) -> Vec<&'a [&'a [u32]]> {
    let mut groups = Vec::with_capacity(parts);
    let mut rest = sequences;
    let mut seen = 0;
    for part in 1..parts {
        let target = total * part / parts;
        // Leave at least one sequence for each part still to come.
        let most = rest.len() - (parts - part);
        let mut take = 0;
        while take < most && (take == 0 || seen + rest[take].len() <= target) {
            seen += rest[take].len();
            take += 1;
        }
        let (group, tail) = rest.split_at(take);
        groups.push(group);
        rest = tail;
    }
    groups.push(rest);
    groups
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
        self.linear_then(&layer.up, &s.x, &mut s.up, Some(ops::gelu))?;
        self.linear(&layer.down, &s.up, &mut s.tmp)?;
        ops::add_assign(&mut s.x, &s.tmp);
        let norm = &layer.out_norm;
        let m = self.model;
        ops::layer_norm(&mut s.x, m.hidden, &norm.gamma, &norm.beta, m.eps);
        Ok(())
    }

    /// `y = layer(x)` for every token, with the model's kernel.
    fn linear(&self, layer: &Linear, x: &[f32], y: &mut [f32]) -> Result<(), String> {
        self.linear_then(layer, x, y, None)
    }

    /// `y = epilogue(layer(x))` for every token.
    fn linear_then(
        &self,
        layer: &Linear,
        x: &[f32],
        y: &mut [f32],
        epilogue: Option<fn(&mut [f32])>,
    ) -> Result<(), String> {
        layer
            .forward(self.model.isa, x, self.total, y, self.team, epilogue)
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
