"""`coinfer device`: run the device half on sentences and print the server's answers."""
from __future__ import annotations

import argparse

from coinfer.options import add_frequency_arguments, add_model_arguments, add_planner_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "device", help="run the device half (embedding + blocks 1..k) against a server",
        description="Tokenise sentences (arguments, --file, or one per line on stdin), run the embedding "
                    "and blocks 1..k pruned to --rho, stream the hidden states to the server and print "
                    "its answers: sentence embeddings (BERT family) or generated text (BART).")
    parser.add_argument("sentences", nargs="*", help="input sentences (default: --file, else stdin)")
    parser.add_argument("--file", help="read sentences from this file, one per line")
    parser.add_argument("--server", default="127.0.0.1:50051",
                        help="server (or channel emulator) address HOST:PORT (default: %(default)s)")
    add_model_arguments(parser, "remaining-parameter ratio of the device half, in (0, 1] (default: 1)")
    parser.add_argument("--codec", default="fp32", choices=["fp32", "fp16", "bf16", "int8", "int4"],
                        help="activation codec on the wire (default: %(default)s)")
    parser.add_argument("--engine", default="eager", choices=["eager", "compile", "onnxruntime"],
                        help="what computes the device half: eager torch; torch.compile (compiled at load, eager "
                             "if it fails); or onnxruntime (exported once, cached under $COINFER_ONNX_CACHE or "
                             "~/.cache/coinfer/onnx; needs pip install 'coinfer[onnx]') (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="sentences per request (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=0,
                        help="truncate inputs to this many tokens (default: the model's limit)")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="BART: tokens to generate at most (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per-request deadline (default: %(default)s)")
    parser.add_argument("--unary", action="store_true", help="one unary call per request instead of a stream")
    add_planner_arguments(parser, "device", "split, rho, codec, frequency cap, transmit power; the device "
                                            "waits for its first plan")
    add_frequency_arguments(parser)
    parser.add_argument("--channel-control", metavar="HOST:PORT",
                        help="the channel emulator's control address: plans set the transmit power there")
    parser.add_argument("--repeat", type=int, default=1,
                        help="go through the sentences this many times; 0 = until stopped (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per sentence (full embedding or tokens, and timings)")
    parser.add_argument("--json-compact", action="store_true",
                        help="print one short JSON line per sentence (under 1 KB) instead: request id, "
                             "timings, bytes, the plan, and the output's dim, sha256 digest (first 16 hex of "
                             "its float32 little-endian bytes; int64 token ids for BART), L2 norm and first "
                             "3 values, not the vector. For container logs: their drivers split the ~8.6 KB "
                             "lines of --json, which then interleave with stderr. Implies --json "
                             "(COINFER_JSON_COMPACT=1)")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="serve OpenAI-compatible HTTP here (/v1/embeddings, /v1/completions, /v1/models, "
                             "/health, /metrics) instead of reading sentences; port 0 picks one and "
                             "'listening on HOST:PORT' is printed; the split point is the server's")
    parser.set_defaults(func=run)


def _decode_line(raw: bytes, where: str) -> str:
    """One line of input as text; a UsageError naming `where` and the first byte that is not UTF-8."""
    from coinfer.errors import UsageError

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "give the input as UTF-8 text") from None


def _read_sentences(args: argparse.Namespace) -> list[str]:
    """The input sentences, each checked to be UTF-8 (an error names the argument or line) and not
    all empty; blank lines are skipped."""
    import os
    import sys

    from coinfer.errors import UsageError

    if args.sentences:
        # argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape): take the bytes back
        sentences = [_decode_line(os.fsencode(s), f"argument {i}") for i, s in enumerate(args.sentences, 1)]
        source = "the arguments"
    elif args.file:
        try:
            with open(args.file, "rb") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise UsageError(f"--file {args.file}: {exc.strerror or exc}") from None
        sentences = [_decode_line(raw, f"--file {args.file} line {n}") for n, raw in enumerate(lines, 1)]
        source = f"--file {args.file}"
    elif sys.stdin.isatty():
        raise UsageError("give sentences as arguments, with --file, or on stdin")
    else:
        lines = sys.stdin.buffer.read().splitlines()
        sentences = [_decode_line(raw, f"stdin line {n}") for n, raw in enumerate(lines, 1)]
        source = "stdin"
    sentences = [s.strip() for s in sentences if s.strip()]
    if not sentences:
        raise UsageError(f"no input: {source} held no sentences (blank lines are skipped)")
    return sentences


def run(args: argparse.Namespace) -> int:
    import itertools
    import json
    import sys

    import torch

    from coinfer.device.client import InferenceError
    from coinfer.device.runtime import DeviceRuntime
    from coinfer.engines import check_engine
    from coinfer.errors import UsageError
    from coinfer.models import resolve_model
    from coinfer.split import GenerationOptions

    check_engine(args.engine)  # a missing onnxruntime is named before anything loads
    if args.http:  # a long-lived local service (coinfer.device.http)
        from coinfer.device.http import serve

        return serve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.repeat < 0:
        raise UsageError("--batch-size must be at least 1 and --repeat at least 0")
    sentences = _read_sentences(args)
    src = resolve_model(args.model, seed=args.seed)
    runtime = DeviceRuntime(src, args.split, args.rho, args.prune_method, args.server, args.codec, args.epoch,
                            args.max_length or None, GenerationOptions(max_new_tokens=args.max_new_tokens),
                            args.max_message_mb * 1024 * 1024, args.timeout_s, not args.unary,
                            channel_control=args.channel_control, emulate_frequency=args.emulate_frequency,
                            engine=args.engine)
    try:
        if args.planner:
            runtime.follow(args.planner, args.node_id, min_rho=args.min_rho)
            print(f"[device] waiting for a plan from {args.planner} ...", file=sys.stderr, flush=True)
            if runtime.watcher.wait_for_plan(args.timeout_s) is None:
                refused = f" ({runtime.watcher.refused} refused: see the log)" if runtime.watcher.refused else ""
                raise UsageError(f"--planner {args.planner}: no plan accepted within {args.timeout_s:g} s{refused}")
            if runtime.client is not None:
                runtime.client.wait_ready(args.timeout_s)
        else:
            runtime.connect()
        rounds = itertools.count() if args.repeat == 0 else range(args.repeat)
        chunks = [sentences[i:i + args.batch_size] for i in range(0, len(sentences), args.batch_size)]
        for _, chunk in ((r, c) for r in rounds for c in chunks):
            result = runtime.infer(chunk)
            texts = _decode_texts(src, result) if result.output_kind == "generated_tokens" else None
            for row, sentence in enumerate(chunk):
                values = result.output[row]
                if args.json_compact:
                    print(compact_record(sentence, result, row, texts), flush=True)
                elif args.json:
                    record = {"sentence": sentence, "request_id": result.request_id,
                              "output_kind": result.output_kind, "output": values.tolist(),
                              "end_to_end_ms": result.end_to_end_s * 1e3, "bytes_sent": result.bytes_sent,
                              "plan_epoch": result.plan_epoch, "truncated": row in result.truncated}
                    record.update({k: v for k, v in result.plan.items() if k != "plan_epoch"})  # what produced it
                    if texts is not None:
                        record["text"] = texts[row]
                    print(json.dumps(record), flush=True)
                elif texts is not None:
                    print(f"{sentence}\t=> {texts[row]!r}", flush=True)
                else:
                    head = ", ".join(f"{v:+.4f}" for v in values[:4].tolist())
                    print(f"{sentence}\t=> [{head}, ...] dim={values.numel()} norm={values.norm():.4f}", flush=True)
            # each request's numbers: one INFO log line from the runtime (--log-level INFO)
    except InferenceError as exc:
        import grpc

        if exc.code == grpc.StatusCode.UNAVAILABLE and exc.message.startswith("server unreachable"):
            print(f"coinfer device: error: {exc.message}", file=sys.stderr)
        else:
            print(f"coinfer device: server refused the request: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    return 0


COMPACT_MAX_BYTES = 1000  # bytes a line: short enough that no log driver splits it (--json lines of ~8.6 KB were)
_COMPACT_TEXT_CHARS = 40  # of the sentence (and BART's text): enough to tell lines apart in a log


def output_digest(values) -> dict:
    """What identifies one answer without its vector: dim, sha256 of its bytes (float32 little-endian for
    embeddings, int64 for token ids; the first 16 hex digits), L2 norm and first 3 values."""
    import hashlib

    import numpy as np
    import torch

    floating = values.is_floating_point()
    array = values.detach().to(torch.float32 if floating else torch.int64).cpu().numpy()
    array = np.ascontiguousarray(array, dtype="<f4" if floating else "<i8")
    head = [round(float(v), 6) if floating else int(v) for v in array[:3]]
    return {"dim": int(array.size), "sha256_16": hashlib.sha256(array.tobytes()).hexdigest()[:16],
            "norm": round(float(np.linalg.norm(array.astype(np.float64))), 6), "head": head}


def _short(text, chars: int = _COMPACT_TEXT_CHARS):
    if not isinstance(text, str) or len(text) <= chars:
        return text
    return text[:chars - 1] + "\u2026"


def compact_record(sentence: str, result, row: int, texts: list[str] | None) -> str:
    """One answer as a JSON line of at most COMPACT_MAX_BYTES: ids, timings, bytes, plan, a digest."""
    import json

    def ms(seconds: float) -> float:
        return round(seconds * 1e3, 3)

    record = {"request_id": result.request_id, "row": row, "sentence": _short(sentence),
              "output_kind": result.output_kind, **output_digest(result.output[row]),
              "device_ms": ms(result.device_compute_s), "encode_ms": ms(result.encode_s),
              "transfer_ms": ms(result.transfer_s), "server_queue_ms": ms(result.server_queue_s),
              "server_compute_ms": ms(result.server_compute_s), "end_to_end_ms": ms(result.end_to_end_s),
              "server_batch_size": result.server_batch_size, "bytes_sent": result.bytes_sent,
              "bytes_received": result.bytes_received, "resends": result.resends, "retries": result.retries,
              "plan_epoch": result.plan_epoch, "truncated": row in result.truncated}
    # the plan fields --json carries; strings cut short (a planner's reason is free text)
    plan = {k: v for k, v in result.plan.items() if k != "plan_epoch"}
    record.update({k: _short(v, 64) for k, v in plan.items()})
    if texts is not None:
        record["text"] = _short(texts[row])
    line = json.dumps(record, separators=(",", ":"))
    # only free text can push it over (non-ASCII is escaped, up to 12 bytes a character): cut the text
    # shorter, then drop it; the numbers always stay
    for chars in (16, 0):
        if len(line) <= COMPACT_MAX_BYTES:
            break
        for key in ("sentence", "text"):
            if key in record:
                record[key] = _short(sentence if key == "sentence" else texts[row], chars) if chars else None
        if not chars:
            record.update({k: _short(v, 16) for k, v in plan.items()})
        line = json.dumps(record, separators=(",", ":"))
    return line


def _decode_texts(src, result) -> list[str] | None:
    """Generated text for real checkpoints; random-weight models only have token ids worth printing."""
    if src.is_random:
        return [" ".join(map(str, row.tolist())) for row in result.output]
    return src.tokenizer.batch_decode(result.output, skip_special_tokens=True)
