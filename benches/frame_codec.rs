//! Frame codec micro-benchmarks: encode and parse one data frame at the sizes the channel bench
//! uses.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tribecast::wire::frame::{encode_frame, parse_frame, FrameKind};
use tribecast::wire::{decode_body, encode_body, Envelope};
use tribecast::MemberId;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [128usize, 1024, 16 * 1024] {
        let payload = vec![0xA5u8; size];
        let env = Envelope {
            sender: MemberId([7; 16]),
            msg_id: 1,
            options: 8,
            payload: &payload,
        };
        let body = encode_body(&env);
        let mut frame = Vec::new();
        encode_frame(&mut frame, FrameKind::Data, 0, 1, &body);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &body, |b, body| {
            let mut out = Vec::with_capacity(body.len() + 64);
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, FrameKind::Data, 0, black_box(1), black_box(body));
                black_box(out.len())
            })
        });
        g.bench_with_input(
            BenchmarkId::new("parse+decode", size),
            &frame,
            |b, frame| {
                b.iter(|| {
                    let (f, _) = parse_frame(black_box(frame), 1 << 22).unwrap().unwrap();
                    let env: Envelope = decode_body(f.body).unwrap();
                    black_box(env.payload.len())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
