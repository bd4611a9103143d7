"""One router per resource: health and model card, predictions, explanations."""
