"""VGG16 per modality: build it with its initial weights, fine-tune it on a trial's labelled
frames, and extract fc1 (the first 4096-d layer, after its ReLU) for every frame.

- `vgg`: the network, its initial weights (ImageNet download, local file or none), input
  normalisation, device and precision choices shared by both stages.
- `finetune`: the resumable training loop and its checkpoint directory.
- `extract`: streaming fc1 extraction into an `ssmvae-features/1` file.
"""
