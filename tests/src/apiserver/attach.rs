//! `pods/attach` over WebSocket: the Kubernetes channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`, and the older binary ones).

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::kubelet::ContainerRun;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[255, channel]` closes that channel (stdin EOF).
pub const CLOSE: u8 = 255;

/// Subprotocols we speak, best first.
pub const PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// Picks our best protocol among those the client offers.
pub fn negotiate(offered: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    PROTOCOLS.iter().copied().find(|p| offered.contains(p))
}

/// What the attach request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Runs one attach session over an upgraded connection until the client
/// leaves or the container exits.
pub async fn session(
    upgraded: hyper::upgrade::Upgraded,
    protocol: &'static str,
    container: Arc<ContainerRun>,
    streams: Streams,
) {
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let (mut tx, mut rx) = ws.split();
    let mut output = container.attach();
    let mut exit = container.exit_watch();
    let structured_status = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let mut exited = false;
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    let Some((&ch, payload)) = data.split_first() else { continue };
                    match ch {
                        STDIN if streams.stdin => {
                            if let Err(e) = container.write_stdin(payload).await {
                                log::debug!("attach stdin of {}: {e}", container.name);
                            }
                        }
                        CLOSE if payload.first() == Some(&STDIN) && protocol.starts_with("v5.") => container.close_stdin().await,
                        RESIZE | STDIN | CLOSE => {}
                        other => log::debug!("attach: ignored frame on channel {other}"),
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            out = output.recv() => match out {
                Some((ch, data)) => {
                    let wanted = (ch == STDOUT && streams.stdout) || (ch == STDERR && streams.stderr);
                    if wanted && tx.send(frame(ch, &data)).await.is_err() {
                        break;
                    }
                }
                // The container dropped its sessions: it has exited.
                None => {
                    exited = true;
                    break;
                }
            },
            _ = async { exit.wait_for(Option::is_some).await.map(drop) }, if !exited => {
                // Output still queued goes out before the status.
                while let Ok((ch, data)) = output.try_recv() {
                    let wanted = (ch == STDOUT && streams.stdout) || (ch == STDERR && streams.stderr);
                    if wanted && tx.send(frame(ch, &data)).await.is_err() {
                        break;
                    }
                }
                exited = true;
                break;
            }
        }
    }
    if exited {
        // The kubelet reports a finished attach as success on the error channel.
        let status =
            if structured_status { json!({"metadata": {}, "status": "Success"}).to_string() } else { String::new() };
        let _ = tx.send(frame(ERROR, status.as_bytes())).await;
        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000.into(), reason: "".into() }))).await;
    }
    let _ = tx.close().await;
    container.detach(streams.stdin).await;
}

fn frame(ch: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(ch);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}
