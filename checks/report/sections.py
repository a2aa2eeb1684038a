"""The training section's figure titles and what each one tells a learner.

Kept free of torch and matplotlib so `recipe report` (which only re-renders stored files) imports
fast. The titles double as keys: the page puts each note, and the matching table, next to its
figure.
"""
from __future__ import annotations

TRAINING = "training"  # the figures.json key of the training section

LOSS_CURVES = "Learning curves: loss per epoch"
ACCURACY_CURVE = "Learning curves: validation accuracy per epoch"
CONFUSION = "Confusion matrix on test (rows: true class, columns: predicted)"
TEMPLATES = "Weight templates: each class's row of W in the image's shape (red raises its score, blue lowers it)"
MISTAKES = "Most confidently wrong test images"
ANCHORS = "Test accuracy against anchors"
SHIFTS = "Test accuracy with every test image moved a few pixels"

NOTES = {
    LOSS_CURVES: (
        "How the weights were optimised: each step moves W and b against the gradient of the "
        "cross-entropy. Both curves should fall below the dashed ln(C) line (the loss of a model that "
        "knows nothing) and then flatten. Train loss is averaged over the epoch while the weights were "
        "still moving, so in epoch 1 it can sit above val loss. Val loss rising while train loss "
        "falls means overfitting."),
    ACCURACY_CURVE: (
        "Accuracy on the validation split after each epoch. Use it (never test) to choose epochs, "
        "learning rate and the other settings. When the run was watched, the train line is measured the "
        "same way (eval mode, after the epoch) on a fixed slice of train: a gap that keeps growing is "
        "overfitting (see the train_val_gap monitor)."),
    CONFUSION: (
        "Each row is a true class, each column the model's prediction; the diagonal is correct. "
        "Large off-diagonal cells show which classes a linear model cannot tell apart (for digits, "
        "typically 4/9, 3/5/8 and 7/9): shapes that overlap pixel by pixel."),
    TEMPLATES: (
        "These are the weights. A linear classifier scores class c as <w_c, x> + b_c: one template "
        "per class, matched pixel by pixel against the (normalised) image. Red pixels add to the "
        "class score when they are ink, blue ones subtract. One template per class is all a linear "
        "model has, so it cannot cope with a class written in several very different ways, or "
        "shifted and rotated: that is the limit of its suitability."),
    MISTAKES: (
        "The model's output is C logits; softmax turns them into probabilities that sum to 1 and the "
        "prediction is the largest. These test images got a wrong prediction with the highest "
        "probability. Some are genuinely ambiguous or mislabelled; the rest show what the "
        "templates miss."),
    SHIFTS: (
        "The same trained model on the same test images, moved by whole pixels (background fills the "
        "gap). A linear model's features are its templates, tied to pixel positions: ink that moves "
        "lands on other template pixels, so accuracy falls fast and the features only apply to "
        "centred, upright images like the training set's. Convolutions and pooling share features "
        "across positions, which is what harder cases (digits in photos, house numbers) need. Shift "
        "augmentation (--augment shift-rotate) flattens this curve, but a linear model pays for it "
        "with accuracy on centred images: one template per class has to blur over every position."),
    ANCHORS: (
        "Put the number in context: chance (1/C) and always-the-majority-class are what a broken "
        "model scores; published linear models show what this model family can reach."),
}

# The lab handout's questions each figure helps answer.
LAB_QUESTIONS = {
    ANCHORS: "What is the suitability of a linear network for hand-written digits?",
    LOSS_CURVES: "How do you optimize model weights to perform better?",
    CONFUSION: "What is the suitability of a linear network for hand-written digits?",
    TEMPLATES: "How do you get the weights?",
    MISTAKES: "What is the output format of the model?",
    SHIFTS: "Does this feature always apply? Will it work for other images?",
}

# The checks whose figures answer one of the handout's data questions ("become one with the data").
CHECK_LAB_QUESTIONS = {
    "label_signal": "Which features help you recognise the number?",
    "label_noise": "Does this feature always apply?",
    "augmentation_consistency": "Will it work for other images?",
}
