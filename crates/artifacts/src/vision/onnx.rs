//! The part of the ONNX format an import needs: a model's initializers (its weights) and, for
//! each, the nodes that consume it. Exporters name many weights after their consumer only
//! (`onnx::MatMul_1966` feeding `/backbone/encoder/layer.0/attention/attention/key/MatMul`), so
//! the consumers are what identifies them.
//!
//! The messages are the subset of `onnx.proto3` (field numbers from it) that is read; every other
//! field is skipped by the decoder, as protobuf allows.

use std::collections::HashMap;

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// An f32 weight of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// The f32 initializers of a model, by name, and the names of the nodes consuming each.
#[derive(Debug, Default)]
pub struct Weights {
    pub tensors: HashMap<String, Initializer>,
    pub consumers: HashMap<String, Vec<String>>,
}

impl Weights {
    /// Decodes an ONNX model file's bytes. Initializers of other types (shape constants) are
    /// left out; weights stored outside the file are refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
        let graph = model.graph.ok_or("the ONNX model has no graph")?;
        let mut w = Weights::default();
        for node in &graph.node {
            for input in &node.input {
                w.consumers.entry(input.clone()).or_default().push(node.name.clone());
            }
        }
        for t in graph.initializer {
            if t.data_location == EXTERNAL {
                return Err(format!("initializer {} is stored outside the file (external data)", t.name));
            }
            if t.data_type != FLOAT {
                continue;
            }
            let dims = t
                .dims
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| format!("initializer {} has dimension {d}", t.name)))
                .collect::<Result<Vec<_>, _>>()?;
            let len: usize = dims.iter().product();
            let data = if t.raw_data.is_empty() {
                t.float_data
            } else {
                if t.raw_data.len() != 4 * len {
                    return Err(format!("initializer {} has {} bytes for {len} floats", t.name, t.raw_data.len()));
                }
                t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            };
            if data.len() != len {
                return Err(format!("initializer {} has {} values for shape {dims:?}", t.name, data.len()));
            }
            w.tensors.insert(t.name, Initializer { dims, data });
        }
        Ok(w)
    }

    /// The initializer consumed by the node named `node` (the one input of that node that is
    /// an f32 initializer).
    pub fn consumed_by(&self, node: &str) -> Option<(&str, &Initializer)> {
        let mut found = self
            .consumers
            .iter()
            .filter(|(_, nodes)| nodes.iter().any(|n| n == node))
            .filter_map(|(name, _)| self.tensors.get_key_value(name.as_str()));
        let (name, t) = found.next()?;
        found.next().is_none().then_some((name.as_str(), t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(initializers: Vec<TensorProto>, nodes: Vec<NodeProto>) -> Vec<u8> {
        ModelProto { graph: Some(GraphProto { node: nodes, initializer: initializers }) }.encode_to_vec()
    }

    fn tensor(name: &str, dims: &[i64], raw: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: FLOAT,
            name: name.into(),
            raw_data: raw.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn initializers_and_their_consumers_are_read() {
        let mut packed = tensor("b", &[2], &[]);
        packed.float_data = vec![5.0, 6.0];
        let shape = TensorProto { dims: vec![1], data_type: 7, name: "shape".into(), ..Default::default() };
        let bytes = encode(
            vec![tensor("onnx::MatMul_1", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), packed, shape],
            vec![
                NodeProto { input: vec!["x".into(), "onnx::MatMul_1".into()], name: "/layer.0/fc1/MatMul".into() },
                NodeProto { input: vec!["y".into(), "b".into(), "shape".into()], name: "/layer.0/fc1/Add".into() },
            ],
        );
        let w = Weights::decode(&bytes).unwrap();
        assert_eq!(w.tensors.len(), 2, "the int64 shape constant is left out");
        let (name, t) = w.consumed_by("/layer.0/fc1/MatMul").unwrap();
        assert_eq!((name, t.dims.as_slice(), t.data[5]), ("onnx::MatMul_1", &[2usize, 3][..], 6.0));
        assert_eq!(w.consumed_by("/layer.0/fc1/Add").unwrap().1.data, vec![5.0, 6.0]);
        assert!(w.consumed_by("/nowhere").is_none());
    }

    #[test]
    fn broken_files_are_refused_with_the_reason() {
        assert!(Weights::decode(b"\x3a\x05garbage").unwrap_err().contains("not an ONNX model"));
        assert!(Weights::decode(&ModelProto { graph: None }.encode_to_vec()).unwrap_err().contains("no graph"));
        let short = encode(vec![tensor("w", &[3], &[1.0, 2.0])], vec![]);
        assert!(Weights::decode(&short).unwrap_err().contains("8 bytes for 3 floats"));
        let ext = TensorProto { data_location: EXTERNAL, ..tensor("e", &[1], &[1.0]) };
        assert!(Weights::decode(&encode(vec![ext], vec![])).unwrap_err().contains("external"));
    }
}
