"""The model, the data and the one trainer: what decides a trained model's weights and numbers."""
