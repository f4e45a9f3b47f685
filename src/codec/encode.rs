//! Result and error messages, serialized straight from the output buffers
//! (values are dequantized while they are written, not collected first).

use std::cell::RefCell;

use model_runtime::TensorSpec;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use super::quant;
use super::{ErrorCode, MessageId};

/// Stage timings of one message, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub queue: f64,
    pub pre: f64,
    pub invoke: f64,
    pub post: f64,
    pub total: f64,
}

#[derive(Serialize)]
pub struct ResultMessage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a MessageId>,
    pub model: &'a str,
    pub model_sha256: &'a str,
    pub device_id: &'a str,
    pub source_topic: &'a str,
    pub received_at: f64,
    pub published_at: f64,
    pub latency_ms: Latency,
    /// Which of the model's accelerators computed this result.
    pub accelerator: &'a str,
    pub outputs: Outputs<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<&'a [TopK<'a>]>,
    /// Micro-batching only: how many messages shared this result's invoke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Windowed models only: which window of which stream this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowInfo<'a>>,
    /// Image models only: the image as it came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageMeta>,
}

/// What a result says beyond its outputs: the window or the image it is
/// about.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extras<'a> {
    pub window: Option<WindowInfo<'a>>,
    pub image: Option<ImageMeta>,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
pub struct WindowInfo<'a> {
    pub key: &'a str,
    pub seq: u64,
    /// Timestamps of the first and last reading, Unix seconds.
    pub start: f64,
    pub end: f64,
    pub readings: usize,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
pub struct ImageMeta {
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TopK<'a> {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a str>,
    pub score: f32,
}

/// The model's outputs as `[{"name","shape","dtype","values"}]`.
pub struct Outputs<'a> {
    pub specs: &'a [TensorSpec],
    pub buffers: &'a [&'a [u8]],
    /// The accelerator that computed them (not part of the array: the
    /// result reports it beside it).
    pub accelerator: &'a str,
}

impl Serialize for Outputs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.specs.len()))?;
        for (spec, buf) in self.specs.iter().zip(self.buffers.iter()) {
            seq.serialize_element(&OutputTensor { spec, buf })?;
        }
        seq.end()
    }
}

struct OutputTensor<'a> {
    spec: &'a TensorSpec,
    buf: &'a [u8],
}

impl Serialize for OutputTensor<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Output", 4)?;
        st.serialize_field("name", &self.spec.name)?;
        st.serialize_field("shape", &self.spec.shape)?;
        st.serialize_field("dtype", self.spec.dtype.name())?;
        st.serialize_field("values", &Values(self))?;
        st.end()
    }
}

struct Values<'a>(&'a OutputTensor<'a>);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let spec = self.0.spec;
        let n = spec.element_count();
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&quant::load(spec.dtype, spec.quantization, self.0.buf, i))?;
        }
        seq.end()
    }
}

/// The `k` highest scores of output tensor `buf`, best first; ties keep the
/// lower index first.
pub fn top_k<'l>(
    spec: &TensorSpec,
    buf: &[u8],
    k: usize,
    labels: Option<&'l [String]>,
) -> Vec<TopK<'l>> {
    let n = spec.element_count();
    let mut scored: Vec<(usize, f32)> = (0..n)
        .map(|i| (i, quant::load(spec.dtype, spec.quantization, buf, i)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
        .into_iter()
        .take(k)
        .map(|(index, score)| TopK {
            index,
            label: labels.and_then(|l| l.get(index)).map(String::as_str),
            score,
        })
        .collect()
}

#[derive(Serialize)]
pub struct ErrorMessage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a MessageId>,
    pub device_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub code: ErrorCode,
    pub message: &'a str,
    pub received_at: f64,
    pub published_at: f64,
}

/// The JSON of an error message, stamped with the current time. None (and
/// a log line) only if serialization fails, which would be a bug.
pub fn error_json(
    device_id: &str,
    model: Option<&str>,
    source_topic: Option<&str>,
    received_at: f64,
    id: Option<&MessageId>,
    failure: &super::Failure,
) -> Option<Vec<u8>> {
    let msg = ErrorMessage {
        id,
        device_id,
        source_topic,
        model,
        code: failure.code,
        message: &failure.message,
        received_at,
        published_at: crate::time::unix_now(),
    };
    match to_vec(&msg) {
        Ok(v) => Some(v),
        Err(e) => {
            log::error!("cannot serialize an error message: {e}");
            None
        }
    }
}

/// A thread's serialization buffer is kept up to this capacity between
/// messages; a larger one (a model with thousands of outputs) is given back.
const SCRATCH_KEPT: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Serializes a message that is built only from our own types; an error
/// here would be a bug, and the caller reports it instead of panicking.
///
/// Written into the thread's reused buffer and copied out at its exact
/// length: `serde_json::to_vec` grows a fresh vector by doubling (five or
/// six reallocations for a HAR result) and hands it on with up to twice
/// the bytes it holds; an answer stays allocated until the broker confirms
/// it (up to the output link's window of them), so under overload that
/// slack was resident memory.
pub fn to_vec<T: Serialize>(msg: &T) -> Result<Vec<u8>, serde_json::Error> {
    SCRATCH.with(|cell| {
        // Only a `Serialize` impl that itself serializes could re-enter.
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return serde_json::to_vec(msg);
        };
        buf.clear();
        let written = serde_json::to_writer(&mut *buf, msg);
        let out = written.map(|()| buf.as_slice().to_vec());
        if buf.capacity() > SCRATCH_KEPT {
            buf.clear();
            buf.shrink_to(SCRATCH_KEPT);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_runtime::{DType, Quantization};

    #[test]
    fn reused_buffer_gives_each_message_its_own_exact_bytes() {
        let long = serde_json::json!({"label": "walking", "values": vec![0.125f32; 300]});
        let short = serde_json::json!({"label": "idle"});
        for msg in [&long, &short, &long, &short] {
            let got = to_vec(msg).expect("serializable");
            assert_eq!(got, serde_json::to_vec(msg).expect("serializable"));
            assert_eq!(got.capacity(), got.len(), "no slack kept with the answer");
        }
    }

    #[test]
    fn a_huge_message_does_not_leave_its_buffer_with_the_thread() {
        let huge = serde_json::json!({"values": vec![0.5f32; 50_000]});
        let got = to_vec(&huge).expect("serializable");
        assert!(got.len() > SCRATCH_KEPT);
        SCRATCH.with(|cell| assert!(cell.borrow().capacity() <= SCRATCH_KEPT));
    }

    #[test]
    fn outputs_are_dequantized_while_serialized() {
        let spec = TensorSpec {
            name: "probs".into(),
            shape: vec![1, 3],
            dtype: DType::I8,
            quantization: Some(Quantization {
                scale: 0.5,
                zero_point: -128,
            }),
            shape_signature: vec![1, 3],
        };
        let buf = [(-128i8) as u8, 0u8, 127u8];
        let bufs: [&[u8]; 1] = [&buf];
        let json = serde_json::to_string(&Outputs {
            specs: std::slice::from_ref(&spec),
            buffers: &bufs,
            accelerator: "cpu",
        })
        .unwrap();
        assert_eq!(
            json,
            r#"[{"name":"probs","shape":[1,3],"dtype":"int8","values":[0.0,64.0,127.5]}]"#
        );
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let top = top_k(&spec, &buf, 2, Some(&labels));
        assert_eq!(
            top,
            vec![
                TopK {
                    index: 2,
                    label: Some("c"),
                    score: 127.5
                },
                TopK {
                    index: 1,
                    label: Some("b"),
                    score: 64.0
                },
            ]
        );
    }
}
