//! Join and write what is heard to a WAV file, following the call's events meanwhile.
//!
//! `cargo run --features core --example record [ws://HOST:PORT/ws] [heard.wav]`

mod common;

use std::time::Duration;

use callme::{AudioSource, CallEvent, ClusterId, Session};

#[tokio::main]
async fn main() -> Result<(), callme::Error> {
    let target = common::Target::from_args().await?;
    let path = std::env::args().skip(1).find(|a| a.ends_with(".wav")).unwrap_or_else(|| "heard.wav".into());
    let call =
        Session::connect(&target.url).await?.load(ClusterId(1), common::SCHEME, "recorder").await?.join(AudioSource::Silence).await?;

    // Three seconds of the mix, frame by frame, while the events are followed too.
    let mut heard = Vec::new();
    let stop = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            frame = call.next_frame() => match frame {
                Some(pcm) => heard.extend_from_slice(&pcm),
                None => break,
            },
            Some(event) = call.next_event() => match event {
                CallEvent::Ended(why) => eprintln!("the call ended: {why}"),
                CallEvent::Core(e) => eprintln!("event {}", e.name()),
                other => eprintln!("{other:?}"),
            },
        }
    }
    callme::audio::write_wav(path.as_ref(), &heard)
        .map_err(|reason| callme::Error::new(callme::Stage::InCall, callme::Cause::Invalid { reason }))?;
    println!("wrote {} ms of the mix to {path}", heard.len() / 48);
    call.leave().await;
    target.stop().await;
    Ok(())
}
