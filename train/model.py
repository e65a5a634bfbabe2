"""InceptionV3 (no top) plus the screening head, as one flat functional tf.keras model.

The backbone mirrors keras.applications.InceptionV3 layer for layer, with two additions:
layers carry stable names (`conv_<i>`, `bn_<i>`, in creation order) so weights can be
assigned by name, and the pooling branch of the last block (`mixed10`) can be a max pool,
as in Google's original inception-2015-12-05 graph. The model is flat (no nested
Model), which quantization-aware training needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from leukedge.tfcompat import tensorflow

BACKBONE_CONVS = 94


@dataclass
class HeadConfig:
    """The screening head on the pooled features: Dense(dense_units, activation) with L1/L2 kernel penalties,
    then Dropout(dropout), then the softmax."""

    dense_units: int = 256
    activation: str = "relu"
    dropout: float = 0.5
    l1: float = 1e-5
    l2: float = 1e-4

    def to_dict(self) -> dict:
        return asdict(self)


class _Layers:
    """Creates the backbone's layers in creation order: conv_bn names its layers conv_<i>, bn_<i>, relu_<i>
    by a running count (so weights can be assigned by name)."""

    def __init__(self, layers):
        self.layers = layers
        self.convs = 0

    def conv_bn(self, x, filters, kh, kw, padding="same", strides=(1, 1)):
        i = self.convs
        self.convs += 1
        x = self.layers.Conv2D(filters, (kh, kw), strides=strides, padding=padding, use_bias=False, name=f"conv_{i}")(x)
        x = self.layers.BatchNormalization(axis=3, scale=False, epsilon=1e-3, name=f"bn_{i}")(x)
        return self.layers.Activation("relu", name=f"relu_{i}")(x)

    def avg_pool(self, x):
        return self.layers.AveragePooling2D((3, 3), strides=(1, 1), padding="same")(x)


def _stem(b: _Layers, inputs):
    """Convs 0..4 with two max pools: the input down to 35x35 (at 299 px)."""
    x = b.conv_bn(inputs, 32, 3, 3, strides=(2, 2), padding="valid")
    x = b.conv_bn(x, 32, 3, 3, padding="valid")
    x = b.conv_bn(x, 64, 3, 3)
    x = b.layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    x = b.conv_bn(x, 80, 1, 1, padding="valid")
    x = b.conv_bn(x, 192, 3, 3, padding="valid")
    return b.layers.MaxPooling2D((3, 3), strides=(2, 2))(x)


def _blocks_35(b: _Layers, x):
    """mixed0..2 (35x35), then mixed3 (down to 17x17)."""
    for i, pool_filters in enumerate((32, 64, 64)):
        b1 = b.conv_bn(x, 64, 1, 1)
        b5 = b.conv_bn(x, 48, 1, 1)
        b5 = b.conv_bn(b5, 64, 5, 5)
        b3 = b.conv_bn(x, 64, 1, 1)
        b3 = b.conv_bn(b3, 96, 3, 3)
        b3 = b.conv_bn(b3, 96, 3, 3)
        bp = b.conv_bn(b.avg_pool(x), pool_filters, 1, 1)
        x = b.layers.concatenate([b1, b5, b3, bp], axis=3, name=f"mixed{i}")
    b3 = b.conv_bn(x, 384, 3, 3, strides=(2, 2), padding="valid")
    bd = b.conv_bn(x, 64, 1, 1)
    bd = b.conv_bn(bd, 96, 3, 3)
    bd = b.conv_bn(bd, 96, 3, 3, strides=(2, 2), padding="valid")
    bp = b.layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    return b.layers.concatenate([b3, bd, bp], axis=3, name="mixed3")


def _blocks_17(b: _Layers, x):
    """mixed4..7 (17x17), then mixed8 (down to 8x8)."""
    for i, c in zip(range(4, 8), (128, 160, 160, 192)):
        b1 = b.conv_bn(x, 192, 1, 1)
        b7 = b.conv_bn(x, c, 1, 1)
        b7 = b.conv_bn(b7, c, 1, 7)
        b7 = b.conv_bn(b7, 192, 7, 1)
        bd = b.conv_bn(x, c, 1, 1)
        bd = b.conv_bn(bd, c, 7, 1)
        bd = b.conv_bn(bd, c, 1, 7)
        bd = b.conv_bn(bd, c, 7, 1)
        bd = b.conv_bn(bd, 192, 1, 7)
        bp = b.conv_bn(b.avg_pool(x), 192, 1, 1)
        x = b.layers.concatenate([b1, b7, bd, bp], axis=3, name=f"mixed{i}")
    b3 = b.conv_bn(x, 192, 1, 1)
    b3 = b.conv_bn(b3, 320, 3, 3, strides=(2, 2), padding="valid")
    b7 = b.conv_bn(x, 192, 1, 1)
    b7 = b.conv_bn(b7, 192, 1, 7)
    b7 = b.conv_bn(b7, 192, 7, 1)
    b7 = b.conv_bn(b7, 192, 3, 3, strides=(2, 2), padding="valid")
    bp = b.layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    return b.layers.concatenate([b3, b7, bp], axis=3, name="mixed8")


def _blocks_8(b: _Layers, x, last_pool: str):
    """mixed9 and mixed10 (8x8); mixed10's pooling branch is a max pool when last_pool is 'max'."""
    for i in (9, 10):
        b1 = b.conv_bn(x, 320, 1, 1)
        b3 = b.conv_bn(x, 384, 1, 1)
        b3_1 = b.conv_bn(b3, 384, 1, 3)
        b3_2 = b.conv_bn(b3, 384, 3, 1)
        b3 = b.layers.concatenate([b3_1, b3_2], axis=3, name=f"mixed{i}_branch3x3")
        bd = b.conv_bn(x, 448, 1, 1)
        bd = b.conv_bn(bd, 384, 3, 3)
        bd_1 = b.conv_bn(bd, 384, 1, 3)
        bd_2 = b.conv_bn(bd, 384, 3, 1)
        bd = b.layers.concatenate([bd_1, bd_2], axis=3)
        if i == 10 and last_pool == "max":
            pooled = b.layers.MaxPooling2D((3, 3), strides=(1, 1), padding="same", name="mixed10_pool_max")(x)
        else:
            pooled = b.avg_pool(x)
        bp = b.conv_bn(pooled, 192, 1, 1)
        x = b.layers.concatenate([b1, b3, bd, bp], axis=3, name=f"mixed{i}")
    return x


def build_inception_v3(image_size: int = 224, last_pool: str = "max", head: HeadConfig | None = None,
                       n_classes: int = 2, backbone_only: bool = False):
    """The flat tf.keras InceptionV3 (module docstring) with the screening head, untrained.

    image_size: input side in px (RGB, image_size x image_size x 3; >= 75). last_pool: 'max' or 'avg', the
    pooling branch of mixed10. head: the Dense/Dropout head (HeadConfig() when None). n_classes: softmax
    outputs ("probabilities"). backbone_only: return the backbone up to global average pooling ("avg_pool",
    2048 features) instead. Returns a tf.keras.Model. Raises ValueError for a too-small size or an unknown
    last_pool.
    """
    tf = tensorflow()
    layers = tf.keras.layers
    if image_size < 75:
        raise ValueError(f"InceptionV3 needs input of at least 75 px, got {image_size}")
    if last_pool not in ("max", "avg"):
        raise ValueError("last_pool must be 'max' or 'avg'")
    b = _Layers(layers)
    inputs = layers.Input((image_size, image_size, 3), name="image")
    x = _blocks_8(b, _blocks_17(b, _blocks_35(b, _stem(b, inputs))), last_pool)
    assert b.convs == BACKBONE_CONVS
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if backbone_only:
        return tf.keras.Model(inputs, features, name="inception_v3_backbone")
    head = head or HeadConfig()
    reg = tf.keras.regularizers.L1L2(l1=head.l1, l2=head.l2)
    h = layers.Dense(head.dense_units, activation=head.activation, kernel_regularizer=reg, name="head_dense")(features)
    h = layers.Dropout(head.dropout, name="head_dropout")(h)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(h)
    return tf.keras.Model(inputs, outputs, name="leukedge_inception_v3")


# Index of the first conv of each block, in creation order (stem = convs 0..4).
BLOCK_FIRST_CONV = {"mixed0": 5, "mixed1": 12, "mixed2": 19, "mixed3": 26, "mixed4": 30, "mixed5": 40,
                    "mixed6": 50, "mixed7": 60, "mixed8": 70, "mixed9": 76, "mixed10": 85}


def set_trainable_from(model, block: str | None, train_batchnorm: bool = False) -> None:
    """Freeze the backbone before `block` (e.g. 'mixed8'); None freezes all of it; 'all' frees every conv.

    BatchNormalization layers stay frozen (in inference mode) when fine-tuning pretrained
    weights, as is standard on small datasets: their statistics stay ImageNet's. Training
    from scratch (`train_batchnorm`) needs them learning, or the net is unnormalised.
    """
    if block is None:
        first = BACKBONE_CONVS
    elif block == "all":
        first = 0
    elif block in BLOCK_FIRST_CONV:
        first = BLOCK_FIRST_CONV[block]
    else:
        raise ValueError(f"unknown block {block!r}; one of all, {', '.join(BLOCK_FIRST_CONV)}")
    for i in range(BACKBONE_CONVS):
        model.get_layer(f"conv_{i}").trainable = i >= first
        model.get_layer(f"bn_{i}").trainable = train_batchnorm and i >= first
    for name in ("head_dense", "probabilities"):
        model.get_layer(name).trainable = True
