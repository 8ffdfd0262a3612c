//! The wire format of `recur serve`: JSON lines over TCP, one request per line from the
//! client and exactly one reply line per request, in the order the requests came on that
//! connection.
//!
//! Requests: `{"stream":"imu-3","x":[0.1,0.2,...]}` feeds one sample (one time step) to the
//! stream `imu-3`; `{"stream":"imu-3","reset":true}` starts that stream's sequence afresh;
//! `{"stream":"imu-3","end":true}` drops the stream and its state. Replies:
//! `{"stream":"imu-3","step":1,"outputs":[{"name":"probs","shape":[1,4],"data":[...]}]}` for a
//! sample (`step` counts the samples the stream has been fed), `{"stream":"imu-3","ok":true}`
//! for reset and end, `{"stream":"imu-3","error":"..."}` for anything refused; an error
//! touches neither the connection nor any stream's state.

use serde::{Deserialize, Serialize};

use crate::tensor::HostTensor;

/// The longest request line accepted; a longer one closes the connection with an error.
pub const MAX_LINE: usize = 1 << 20;

/// The longest stream id accepted.
pub const MAX_STREAM_ID: usize = 128;

/// One request line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The stream (sensor) this request is about.
    pub stream: String,
    /// One sample: the model's per-step input, flattened (row-major), batch 1.
    #[serde(default)]
    pub x: Option<Vec<f32>>,
    /// Start the stream's sequence afresh.
    #[serde(default)]
    pub reset: bool,
    /// Drop the stream and its state.
    #[serde(default)]
    pub end: bool,
}

/// What a request asks for, once it has been checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Feed one sample.
    Step(Vec<f32>),
    /// Forget the stream's state.
    Reset,
    /// Drop the stream.
    End,
    /// Answer with this error (a line that could not be read), in turn with the others.
    Refuse(String),
}

impl Request {
    /// Parses and checks one line: the stream id and exactly one of `x`, `reset`, `end`. On an
    /// error, the stream id when it could be read, and the reason.
    pub fn parse(line: &[u8]) -> Result<(String, Command), (Option<String>, String)> {
        let req: Request = serde_json::from_slice(line).map_err(|e| {
            // Say which stream when the line is JSON with a stream id but a bad field.
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("stream")?.as_str().map(str::to_string));
            (id, format!("bad request: {e}"))
        })?;
        if req.stream.is_empty() || req.stream.len() > MAX_STREAM_ID {
            return Err((
                None,
                format!("stream id must be 1 to {MAX_STREAM_ID} bytes"),
            ));
        }
        let command = match (req.x, req.reset, req.end) {
            (Some(x), false, false) => Command::Step(x),
            (None, true, false) => Command::Reset,
            (None, false, true) => Command::End,
            _ => {
                return Err((
                    Some(req.stream),
                    "give exactly one of \"x\" (a sample), \"reset\": true or \"end\": true".into(),
                ))
            }
        };
        Ok((req.stream, command))
    }
}

/// One output of a step, as sent back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    /// The model's output name.
    pub name: String,
    /// Its shape for this step (batch 1, and one time step where the output has a time axis).
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

impl Output {
    /// The reply form of one named output tensor.
    pub fn of(name: &str, tensor: &HostTensor) -> Self {
        let values = tensor.to_f32();
        Output {
            name: name.to_string(),
            shape: values.shape().to_vec(),
            data: values.iter().copied().collect(),
        }
    }
}

/// One reply line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    /// The stream the request named (absent when the request could not be read).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream: Option<String>,
    /// Samples the stream has been fed, this one included (step replies only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<usize>,
    /// The model's outputs for this step, in graph order (step replies only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub outputs: Option<Vec<Output>>,
    /// `true` for an acknowledged reset or end.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ok: Option<bool>,
    /// Why the request was refused.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Reply {
    /// An error reply.
    pub fn error(stream: Option<String>, reason: impl Into<String>) -> Self {
        Reply {
            stream,
            step: None,
            outputs: None,
            ok: None,
            error: Some(reason.into()),
        }
    }

    /// An acknowledgement of a reset or end.
    pub fn ok(stream: String) -> Self {
        Reply {
            stream: Some(stream),
            step: None,
            outputs: None,
            ok: Some(true),
            error: None,
        }
    }

    /// The reply's line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a reply always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(
            Request::parse(br#"{"stream":"a","x":[1.5,-2]}"#),
            Ok(("a".into(), Command::Step(vec![1.5, -2.0])))
        );
        assert_eq!(
            Request::parse(br#"{"stream":"a","reset":true}"#),
            Ok(("a".into(), Command::Reset))
        );
        let (id, why) = Request::parse(br#"{"stream":"b","x":[1],"end":true}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("b"));
        assert!(why.contains("exactly one"), "{why}");
        let (id, why) = Request::parse(br#"{"stream":"c","x":["one"]}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("c"));
        assert!(why.starts_with("bad request"), "{why}");
        let (id, _) = Request::parse(b"not json").unwrap_err();
        assert_eq!(id, None);
    }

    #[test]
    fn f32_values_survive_the_round_trip() {
        let values = [0.1f32, 1.0 / 3.0, -7.25e-8, 3.4e38];
        let out = Output {
            name: "y".into(),
            shape: vec![4],
            data: values.to_vec(),
        };
        let reply = Reply {
            stream: Some("s".into()),
            step: Some(1),
            outputs: Some(vec![out]),
            ok: None,
            error: None,
        };
        let back: Reply = serde_json::from_str(&reply.to_line()).unwrap();
        assert_eq!(back.outputs.unwrap()[0].data, values);
    }
}
