//! Forwarding inbox files to devices: the hub sends a file to a device's LocalSend app (as a
//! LocalSend v2 sender, over the tunnel) at once when the device is online, or as soon as it
//! next comes online; a transfer that breaks is sent again whole on the next try.

use std::io::Read;
use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::StreamBody;

use crate::connect::invite::{https_post, Trust};

/// Sends `name` (`size` bytes read from `plain`) to the LocalSend app at `to`, announcing the
/// hub as `info`.
pub async fn send(
    to: IpAddr,
    info: &serde_json::Value,
    name: &str,
    size: u64,
    plain: Box<dyn Read + Send>,
) -> Result<(), String> {
    let port = super::localsend::PORT;
    let authority = match to {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    let host = to.to_string();
    let prepare = serde_json::json!({
        "info": info,
        "files": { "f": {
            "id": "f",
            "fileName": name,
            "size": size,
            "fileType": "application/octet-stream",
        }},
    });
    let body = http_body_util::Full::new(Bytes::from(prepare.to_string()));
    let (status, answer) = https_post(
        &authority,
        &host,
        &Trust::Tunnel,
        "/api/localsend/v2/prepare-upload",
        "application/json",
        body,
    )
    .await
    .map_err(|e| format!("{e:#}"))?;
    if status != 200 {
        return Err(format!("the device answered {status} to the transfer"));
    }
    let v: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    let (Some(session), Some(token)) = (v["sessionId"].as_str(), v["files"]["f"].as_str()) else {
        return Err("the device did not take the file".into());
    };
    let (body, reader) = read_body(plain);
    let path = format!("/api/localsend/v2/upload?sessionId={session}&fileId=f&token={token}");
    let r = https_post(
        &authority,
        &host,
        &Trust::Tunnel,
        &path,
        "application/octet-stream",
        body,
    )
    .await;
    let _ = reader.await;
    match r {
        Ok((200..=204, _)) => Ok(()),
        Ok((s, _)) => Err(format!("the device answered {s} to the upload")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// A request body streamed from `plain`, read on a blocking thread (await the handle after
/// the request).
pub(crate) fn read_body(
    mut plain: Box<dyn Read + Send>,
) -> (
    impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match plain.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let frame = hyper::body::Frame::data(Bytes::copy_from_slice(&buf[..n]));
                    if tx.blocking_send(Ok(frame)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (StreamBody::new(stream), reader)
}
