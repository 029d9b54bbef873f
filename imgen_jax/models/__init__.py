"""The pretrained MusicGen models in Flax NNX: the LM (`lm`), EnCodec (`encodec`), the T5 text encoder (`t5`)
and the codebook delay pattern (`patterns`). They know nothing of Instruct-MusicGen: conditioning plug-ins
enter the LM through `lm.LayerFusion`."""
