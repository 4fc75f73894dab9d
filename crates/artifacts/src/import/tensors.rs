//! llama.cpp tensor names and layout back to Hugging Face's.
//!
//! Two things differ between a llama.cpp GGUF and a Hugging Face Llama checkpoint:
//! - names: `blk.N.attn_q.weight` is `model.layers.N.self_attn.q_proj.weight`, and so on
//!   ([`hf_name`]);
//! - the rows of `attn_q` and `attn_k`. Hugging Face's Llama applies RoPE to the two halves of each
//!   head (`rotate_half`: dimension i pairs with i + head_dim/2); llama.cpp rotates adjacent pairs
//!   (2i, 2i+1). Its converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) therefore reorders
//!   each head's rows: `w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2).reshape(out, in)`,
//!   with `n_head` the KV head count for `attn_k`. [`unpermute`] is its inverse. Attention scores
//!   are unchanged by the pair of permutations (q and k are permuted alike), which is why the
//!   GGUF and the imported checkpoint compute the same function.

use candle_core::{DType, Tensor};

use notellm_model::error::Result;

/// The Hugging Face name of a llama.cpp tensor, or `None` when the importer does not know it.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Which RoPE-permuted projection a llama.cpp tensor is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permuted {
    Query,
    Key,
}

pub fn permuted(gguf: &str) -> Option<Permuted> {
    if gguf.ends_with(".attn_q.weight") {
        Some(Permuted::Query)
    } else if gguf.ends_with(".attn_k.weight") {
        Some(Permuted::Key)
    } else {
        None
    }
}

/// Inverse of llama.cpp's per-head row permutation of `w: [n_head * head_dim, in]`.
pub fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let head_dim = out / n_head;
    Ok(w.reshape((n_head, head_dim / 2, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?)
}

/// llama.cpp's permutation itself (what `convert_hf_to_gguf.py` applies), for tests.
pub fn permute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let head_dim = out / n_head;
    Ok(w.reshape((n_head, 2, head_dim / 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?)
}

/// `w: [rows, hidden]` with one more row appended: the mean of the existing rows.
pub fn with_mean_row(w: &Tensor) -> Result<Tensor> {
    let mean = w.to_dtype(DType::F32)?.mean_keepdim(0)?.to_dtype(w.dtype())?;
    Ok(Tensor::cat(&[w, &mean], 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names() {
        assert_eq!(hf_name("blk.12.attn_output.weight").as_deref(), Some("model.layers.12.self_attn.o_proj.weight"));
        assert_eq!(hf_name("blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(permuted("blk.3.attn_k.weight"), Some(Permuted::Key));
        assert_eq!(permuted("blk.3.attn_v.weight"), None);
    }

    #[test]
    fn unpermute_inverts_permute_and_pairs_rows() {
        let (heads, hd, inp) = (3, 8, 5);
        let w =
            Tensor::arange(0f32, (heads * hd * inp) as f32, &Device::Cpu).unwrap().reshape((heads * hd, inp)).unwrap();
        let p = permute(&w, heads).unwrap();
        // llama.cpp's row 2i (of a head) is HF's row i, its row 2i+1 HF's row i + hd/2.
        let row = |t: &Tensor, r: usize| t.get(r).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(row(&p, hd + 2), row(&w, hd + 1));
        assert_eq!(row(&p, hd + 3), row(&w, hd + 1 + hd / 2));
        let back = unpermute(&p, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn mean_row_is_appended() {
        let w = Tensor::new(&[[1f32, 2.], [3., 6.]], &Device::Cpu).unwrap();
        assert_eq!(
            with_mean_row(&w).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.], vec![3., 6.], vec![2., 4.]]
        );
    }
}
