"""The data path: VOC / SBD layouts → TFRecords (``convert``) → tf.data pipelines (``pipeline``).

Modules: ``download`` (VOC 2012, SBD and the paper's lists, checked and cached), ``voc``
(layouts, validation of pairs), ``records`` (the record schema), ``convert`` (``python -m
fcn_keras.data.convert``), ``pipeline`` (``train_dataset``, ``eval_dataset``, ``resolve_data``),
``synthetic`` (``make_synthetic_voc``, ``make_synthetic_sbd``). See docs/data.md.
"""
