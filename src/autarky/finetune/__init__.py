"""The finetune stage: adapt an existing model (full fine-tuning or LoRA) to chat records, with the train stage's
loop; the run dir records the base model's hash and every record's sha256."""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "FinetuneConfig": "config",
    "load_finetune_config": "config",
    "finetune": "trainer",
    "FinetuneSummary": "trainer",
    "read_records": "records",
    "Record": "records",
    "Renderer": "render",
    "Example": "render",
    "pack_rows": "packing",
    "PackedBatches": "packing",
})
