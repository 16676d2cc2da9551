"""A small real model service for bench/gpu: a GPT-2-sized transformer and a convolutional vocoder.

On a CUDA GPU: a 124M-parameter transformer (GPT-2 small's shape: 12 layers, 768 wide, 50257 tokens)
and the vocoder, both in bf16. Elsewhere a tiny fp32 configuration of the same code (2 layers, 256
wide), so it runs on any CPU. Weights are random (seeded): what is measured is the serving path,
not the text. Served by FastAPI/uvicorn, one model call at a time (a lock), as a single-GPU
inference server does:

  GET  /health                                 device, dtype, parameters
  POST /v1/completions {"prompt", "max_tokens", "stream"}   32 greedy tokens; SSE when "stream"
  POST /v1/embeddings  {"input": [str, ...]}    768 floats per input (16 inputs: ~250 KB of JSON)
  POST /tts            {"text"}                 a 16-bit 22.05 kHz WAV (30 characters: ~120 KB)

  python model_service.py --port 8031 [--device cpu|cuda|auto] [--config tiny|gpt2]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import struct
import threading
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

CONFIGS = {
    "gpt2": {"layers": 12, "width": 768, "heads": 12, "vocab": 50257, "context": 1024, "vocoder": 256},
    "tiny": {"layers": 2, "width": 256, "heads": 4, "vocab": 8192, "context": 512, "vocoder": 64},
}
EMBEDDING_WIDTH = 768
SAMPLE_RATE = 22050
FRAMES_PER_CHARACTER = 8
HOP = 256  # samples per frame: four x4 upsamplings


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, vocab: int, context: int, **_: int):
        super().__init__()
        self.context = context
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.embedding_head = nn.Linear(width, EMBEDDING_WIDTH)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hidden(tokens)[:, -1] @ self.wte.weight.T  # tied output head, last position only


class Vocoder(nn.Module):
    """Characters -> frames -> four x4 upsamplings, each with convolutions -> a waveform in [-1, 1]."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.embed = nn.Embedding(256, channels)
        self.pre = nn.Conv1d(channels, channels, 7, padding=3)
        layers, width = [], channels
        for _ in range(4):
            layers += [nn.LeakyReLU(0.1), nn.Upsample(scale_factor=4, mode="nearest"),
                       nn.Conv1d(width, width // 2, 7, padding=3), nn.LeakyReLU(0.1),
                       nn.Conv1d(width // 2, width // 2, 7, padding=3)]
            width //= 2
        self.up = nn.Sequential(*layers)
        self.post = nn.Conv1d(width, 1, 7, padding=3)

    def forward(self, characters: torch.Tensor) -> torch.Tensor:
        frames = self.embed(characters).repeat_interleave(FRAMES_PER_CHARACTER, dim=1).transpose(1, 2)
        x = self.post(self.up(self.pre(frames)))[0, 0]
        x = x - x.mean()
        return torch.tanh(x / (x.std() + 1e-6) * 0.5)  # a normal speaking level, whatever the weights


class FifoLock:
    """The model's lock, granted in the order asked (threading.Lock is not fair: under 8 concurrent
    callers, some completions waited seconds while others went again and again)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._serving = 0

    def __enter__(self) -> None:
        with self._cond:
            ticket = next(self._tickets)
            self._cond.wait_for(lambda: ticket == self._serving)

    def __exit__(self, *_: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class Models:
    def __init__(self, config: str, device: str):
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.config_name, self.config = config, CONFIGS[config]
        self.lm = Transformer(**self.config).to(self.device, self.dtype).eval()
        self.vocoder = Vocoder(self.config["vocoder"]).to(self.device, self.dtype).eval()
        self.lock = FifoLock()
        self.parameters = sum(p.numel() for p in self.lm.parameters())

    def tokens(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))[-(self.config["context"] - 64):] or [0]

    @staticmethod
    def text_of(token: int) -> str:
        return chr(32 + token % 95)

    @torch.inference_mode()
    def _steps(self, prompt: str, max_tokens: int, lock: "FifoLock | None") -> Iterator[str]:
        tokens = torch.tensor([self.tokens(prompt)], device=self.device)
        for _ in range(max_tokens):
            with lock or contextlib.nullcontext():
                token = self.lm.logits(tokens).argmax(-1)
                tokens = torch.cat([tokens, token[:, None]], dim=1)
                value = int(token.item())
            yield self.text_of(value)

    def generate(self, prompt: str, max_tokens: int) -> Iterator[str]:
        """A stream: the lock is taken per token, so streams interleave."""
        return self._steps(prompt, max_tokens, self.lock)

    def complete(self, prompt: str, max_tokens: int) -> str:
        """A whole completion under the lock: calls queue whole, in order."""
        with self.lock:
            return "".join(self._steps(prompt, max_tokens, None))

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> list[list[float]]:
        rows = [self.tokens(text) for text in texts]
        longest = max(len(row) for row in rows)
        tokens = torch.tensor([row + [0] * (longest - len(row)) for row in rows], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows], device=self.device)
        with self.lock:
            hidden = self.lm.hidden(tokens)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            vectors = F.normalize(self.lm.embedding_head(pooled).float(), dim=-1)
            return vectors.cpu().tolist()

    @torch.inference_mode()
    def speak(self, text: str) -> bytes:
        characters = torch.tensor([list(text.encode("utf-8"))[:2000] or [32]], device=self.device)
        with self.lock:
            wave = self.vocoder(characters)
            pcm = (wave.float() * 32767).round().to(torch.int16).cpu().contiguous()
        return wav(bytes(pcm.untyped_storage()))


def wav(pcm: bytes) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16) + b"data" + struct.pack("<I", len(pcm)) + pcm)


def build_app(models: Models):
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    app = FastAPI(title="bench/gpu model service")

    @app.get("/health")
    def health() -> dict:
        name = torch.cuda.get_device_name(0) if models.device.type == "cuda" else "cpu"
        return {"status": "ok", "device": name, "dtype": str(models.dtype).removeprefix("torch."),
                "config": models.config_name, "parameters": models.parameters, "torch": torch.__version__}

    @app.post("/v1/completions")
    def completions(prompt: str = Body("Once upon a time", embed=True), max_tokens: int = Body(32, embed=True),
                    stream: bool = Body(False, embed=True)):
        max_tokens = max(1, min(int(max_tokens), 256))
        if stream:
            def events() -> Iterator[str]:
                for piece in models.generate(prompt, max_tokens):
                    yield "data: " + json.dumps({"choices": [{"text": piece, "index": 0}]}) + "\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text = models.complete(prompt, max_tokens)
        return {"object": "text_completion", "model": models.config_name,
                "choices": [{"text": text, "index": 0, "finish_reason": "length"}],
                "usage": {"completion_tokens": max_tokens}}

    @app.post("/v1/embeddings")
    def embeddings(input: list[str] = Body(..., embed=True)):  # noqa: A002 - OpenAI's field name
        vectors = models.embed(input[:256] or [""])
        return JSONResponse({"object": "list", "model": models.config_name,
                             "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]})

    @app.post("/tts", response_class=Response, responses={200: {"content": {"audio/wav": {}}}})
    def tts(text: str = Body(..., embed=True)):
        return Response(models.speak(text), media_type="audio/wav")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8031)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--config", default=None, choices=sorted(CONFIGS), help="default: gpt2 on cuda, tiny on cpu")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":  # leave cores to the chute beside it (a GPU server's CPU threads mostly wait)
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # the vocoder's convolutions: pick the fastest kernels per shape
    started = time.monotonic()
    models = Models(args.config or ("gpt2" if device == "cuda" else "tiny"), device)
    # warm up (kernels, allocator, cuDNN's choices for the usual shapes) before the port opens
    timings = {}
    for _ in range(3):
        for name, work in (("completion_32", lambda: models.complete("Once upon a time", 32)),
                           ("embed_16", lambda: models.embed([f"sentence number {i} about serving" for i in range(16)])),
                           ("tts_30", lambda: models.speak("hello world this is thirty chr"))):
            began = time.perf_counter()
            work()
            timings[name] = f"{(time.perf_counter() - began) * 1000:.1f}ms"
    print(f"model service: {models.config_name} ({models.parameters / 1e6:.0f}M parameters) on {device} in "
          f"{str(models.dtype).removeprefix('torch.')}, ready in {time.monotonic() - started:.1f}s; "
          f"in-process: {timings}", flush=True)

    import uvicorn

    uvicorn.run(build_app(models), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
