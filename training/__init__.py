"""PP-SSL training: MoCo v2 + AIS (teacher distillation over a text corpus) + IADM (input-gradient CAM).

Modules: ``config`` (TrainConfig), ``augment`` (two-view transform), ``losses`` (pure loss functions),
``queue`` (MoCo negatives), ``moco`` (student / momentum model), ``ais`` (corpus + student projection),
``iadm`` (CAM targets), ``teacher`` / ``teacher_fit`` (CLIP teachers), ``trainer`` (the loop),
``state`` (resume files), ``evaluate`` (retrieval during training), ``ddp`` (torchrun helpers),
``probe`` (linear probe), ``cli`` (``ppssl train|teacher|probe``). Imports only ``engine``.
"""
