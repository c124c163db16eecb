"""Response toxicity rate (RTR), utility and over-refusal of a trained model."""
