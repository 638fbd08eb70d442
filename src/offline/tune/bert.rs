//! A BERT encoder built only from differentiable candle ops, for fine-tuning: the weights
//! are `Var`s under their safetensors names, so the tuned model saves back in the layout
//! every loader reads. candle-transformers' BERT cannot be used here: its fused layer-norm
//! op has no backward pass. No dropout: the short, deterministic runs `fit` makes gain
//! nothing measurable from it.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// The shape parameters read from the model's `config.json`.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub heads: usize,
    pub hidden: usize,
    pub eps: f64,
}

pub struct TrainableBert {
    /// Every tensor of the checkpoint, under its name; float ones are trainable.
    tensors: HashMap<String, Var>,
    /// Non-float tensors (`position_ids`), saved back unchanged.
    fixed: HashMap<String, Tensor>,
    shape: Shape,
}

impl TrainableBert {
    pub fn load(weights: &Path, shape: Shape, device: &Device) -> Result<TrainableBert> {
        let mut tensors = HashMap::new();
        let mut fixed = HashMap::new();
        for (name, tensor) in candle_core::safetensors::load(weights, device)? {
            // Checkpoints saved from `BertForMaskedLM` and friends prefix names with `bert.`.
            let name = name.strip_prefix("bert.").unwrap_or(&name).to_string();
            if tensor.dtype().is_float() {
                tensors.insert(name, Var::from_tensor(&tensor.to_dtype(DType::F32)?)?);
            } else {
                fixed.insert(name, tensor);
            }
        }
        let model = TrainableBert {
            tensors,
            fixed,
            shape,
        };
        // Fail at load, not mid-training, if a weight is missing.
        model.get("embeddings.word_embeddings.weight")?;
        for layer in 0..shape.layers {
            model.get(&format!("encoder.layer.{layer}.output.dense.weight"))?;
        }
        Ok(model)
    }

    pub fn vars(&self) -> Vec<Var> {
        self.tensors.values().cloned().collect()
    }

    /// Writes the (tuned) weights as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut all: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        all.extend(self.fixed.clone());
        candle_core::safetensors::save(&all, path)
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .map(Var::as_tensor)
            .ok_or_else(|| candle_core::Error::Msg(format!("the checkpoint has no `{name}`")))
    }

    /// Mean-pooled, L2-normalised sentence embeddings `[batch][hidden]` for padded token
    /// ids `[batch][len]` and their mask (1 for tokens, 0 for padding).
    pub fn embed(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let hidden = self.shape.hidden;
        let words = self
            .get("embeddings.word_embeddings.weight")?
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, len, hidden))?;
        let positions = self
            .get("embeddings.position_embeddings.weight")?
            .narrow(0, 0, len)?;
        let token_type = self
            .get("embeddings.token_type_embeddings.weight")?
            .narrow(0, 0, 1)?;
        let x = words
            .broadcast_add(&positions.unsqueeze(0)?)?
            .broadcast_add(&token_type.unsqueeze(0)?)?;
        let mut x = self.layer_norm(&x, "embeddings.LayerNorm")?;
        let mask_f = mask.to_dtype(DType::F32)?;
        // 0 where attending is allowed, a large negative number on padding: `[batch,1,1,len]`.
        let bias = ((mask_f.ones_like()? - &mask_f)? * -1e4)?.reshape((batch, 1, 1, len))?;
        for layer in 0..self.shape.layers {
            x = self.layer(&x, &bias, &format!("encoder.layer.{layer}"))?;
        }
        let weights = mask_f.unsqueeze(2)?;
        let summed = x.broadcast_mul(&weights)?.sum(1)?;
        let counts = weights.sum(1)?.clamp(1.0, f64::INFINITY)?;
        let pooled = summed.broadcast_div(&counts)?;
        let norm = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        pooled.broadcast_div(&norm)
    }

    fn layer(&self, x: &Tensor, bias: &Tensor, prefix: &str) -> Result<Tensor> {
        let (batch, len, hidden) = x.dims3()?;
        let heads = self.shape.heads;
        let head_dim = hidden / heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, len, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.linear(x, &format!("{prefix}.attention.self.query"))?)?;
        let k = split(self.linear(x, &format!("{prefix}.attention.self.key"))?)?;
        let v = split(self.linear(x, &format!("{prefix}.attention.self.value"))?)?;
        let scores =
            (q.matmul(&k.t()?.contiguous()?)? / (head_dim as f64).sqrt())?.broadcast_add(bias)?;
        let context = softmax_last(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, len, hidden))?;
        let attended = self.linear(&context, &format!("{prefix}.attention.output.dense"))?;
        let attended = self.layer_norm(
            &(attended + x)?,
            &format!("{prefix}.attention.output.LayerNorm"),
        )?;
        let inner = self
            .linear(&attended, &format!("{prefix}.intermediate.dense"))?
            .gelu_erf()?;
        let out = self.linear(&inner, &format!("{prefix}.output.dense"))?;
        self.layer_norm(&(out + attended)?, &format!("{prefix}.output.LayerNorm"))
    }

    /// `x·Wᵀ + b` over the last dimension of a `[batch][len][in]` tensor.
    fn linear(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let (batch, len, inputs) = x.dims3()?;
        let weight = self.get(&format!("{prefix}.weight"))?;
        let bias = self.get(&format!("{prefix}.bias"))?;
        let outputs = weight.dim(0)?;
        x.reshape((batch * len, inputs))?
            .matmul(&weight.t()?)?
            .broadcast_add(bias)?
            .reshape((batch, len, outputs))
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let gamma = self.get(&format!("{prefix}.weight"))?;
        let beta = self.get(&format!("{prefix}.bias"))?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(variance + self.shape.eps)?.sqrt()?)?
            .broadcast_mul(gamma)?
            .broadcast_add(beta)
    }
}

/// Softmax over the last dimension; the max is subtracted for stability (and detached: it
/// cancels out of the result, so it needs no gradient).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}
