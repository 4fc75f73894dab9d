//! From image features to the LLM: the MLP that turns the Q-Former's query states into visual
//! tokens of the LLM's width, and the late-fusion gate that mixes the image's CLS feature back
//! into an embedding after the LLM (NoteLLM-2, as the official code does it):
//!
//! ```text
//! v = W_v · CLS                 CLS: token 0 of the encoder's last hidden states, no final norm
//! z = sigmoid(W_g · [h; v])     W_v: vision width -> hidden, W_g: 2 hidden -> hidden, no biases
//! e = z ⊙ h + (1 - z) ⊙ v
//! ```

use candle_core::{Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::layers::FeedForward;
use crate::error::{ModelError, Result};

/// `fc2(gelu(fc1(q)))`: Q-Former width -> LLM hidden -> GELU -> LLM hidden.
#[derive(Debug, Clone)]
pub struct VisualProjection(FeedForward);

impl VisualProjection {
    pub fn new(qformer_hidden: usize, llm_hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(FeedForward::new(qformer_hidden, llm_hidden, llm_hidden, vb)?))
    }

    /// `[b, queries, qformer_hidden]` -> `[b, queries, llm_hidden]`.
    pub fn forward(&self, queries: &Tensor) -> Result<Tensor> {
        self.0.forward(queries)
    }
}

/// The late-fusion gate.
#[derive(Debug, Clone)]
pub struct LateFusion {
    w_v: Linear,
    w_g: Linear,
}

impl LateFusion {
    pub fn new(vision_width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            w_v: candle_nn::linear_no_bias(vision_width, hidden, vb.pp("w_v"))?,
            w_g: candle_nn::linear_no_bias(2 * hidden, hidden, vb.pp("w_g"))?,
        })
    }

    /// Fuses LLM states `h` (`[b, hidden]`) with the images' CLS features (`[b, vision_width]`).
    pub fn forward(&self, h: &Tensor, cls: &Tensor) -> Result<Tensor> {
        if h.dim(0)? != cls.dim(0)? {
            return Err(ModelError::Input(format!("{} states but {} images", h.dim(0)?, cls.dim(0)?)));
        }
        let v = self.w_v.forward(cls)?;
        let z = candle_nn::ops::sigmoid(&self.w_g.forward(&Tensor::cat(&[h, &v], D::Minus1)?)?)?;
        let keep = (z.ones_like()? - &z)?;
        Ok(((&z * h)? + (keep * v)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn late_fusion_matches_a_hand_computed_example() {
        // hidden 2, vision width 1.
        // W_v = [[2], [-1]]: v = W_v · [3] = [6, -3].
        // W_g = [[1, 0, 0, 0], [0, 0, 0, 1]]: z = sigmoid([h0, v1]) = sigmoid([0, -3]).
        // e = z ⊙ h + (1 - z) ⊙ v with h = [0, 4]:
        //   e0 = 0.5 · 0 + 0.5 · 6 = 3
        //   e1 = s · 4 + (1 - s) · (-3), s = 1 / (1 + e^3) = 0.047425873
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let fusion = LateFusion::new(1, 2, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        {
            let data = vm.data().lock().unwrap();
            data["w_v.weight"].set(&Tensor::new(&[[2f32], [-1.0]], &dev).unwrap()).unwrap();
            data["w_g.weight"].set(&Tensor::new(&[[1f32, 0., 0., 0.], [0., 0., 0., 1.]], &dev).unwrap()).unwrap();
        }
        let h = Tensor::new(&[[0f32, 4.0]], &dev).unwrap();
        let cls = Tensor::new(&[[3f32]], &dev).unwrap();
        let e = fusion.forward(&h, &cls).unwrap().to_vec2::<f32>().unwrap();
        let s = 1.0 / (1.0 + 3f32.exp());
        let want = [3.0, s * 4.0 + (1.0 - s) * -3.0];
        assert!((e[0][0] - want[0]).abs() < 1e-6 && (e[0][1] - want[1]).abs() < 1e-6, "{e:?} vs {want:?}");
        assert!((want[1] - -2.668_019).abs() < 1e-5);
    }

    #[test]
    fn fusion_refuses_mismatched_batches() {
        let vm = VarMap::new();
        let fusion = LateFusion::new(3, 4, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let h = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let cls = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(fusion.forward(&h, &cls).is_err());
    }
}
