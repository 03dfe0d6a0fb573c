"""The data path: VOC / SBD layouts → TFRecords (``convert``) → tf.data pipelines (``pipeline``).

Modules: ``voc`` (layouts, validation of pairs), ``records`` (the record schema),
``convert`` (``python -m fcn_keras.data.convert``), ``pipeline`` (``train_dataset``,
``eval_dataset``, ``resolve_data``), ``synthetic`` (``make_synthetic_voc``). See docs/data.md.
"""
