"""The model: backbones, the multi-task discriminator, its training stream and the train stage."""
