"""Titanic survival model service: ONNX model, aiohttp app (plain + KServe V2 API), trainer and batch job."""
