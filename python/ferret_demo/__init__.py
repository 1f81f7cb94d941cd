"""ferret-demo: federated full fine-tuning of a real pretrained model on real non-IID data,
Ferret vs FedAvg vs a zeroth-order baseline, with a report (table, CSV/JSON, PNG)."""
