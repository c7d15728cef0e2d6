"""The export stage: after training, turn the output model into artifacts users can serve
(merged safetensors, GGUF, ONNX), verify each with a loader kubetune did not write, and record
them in a manifest."""
