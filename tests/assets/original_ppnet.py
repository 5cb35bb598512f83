"""A model class that follows the original ProtoPNet code's interface exactly (attribute names, shapes, the log
activation with epsilon 1e-4, forward returning (logits, min_distances)), written for the tests; protomdm must
work on it through its adapter without importing anything from here."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class PPNet(nn.Module):
    def __init__(self, features, add_on_layers, img_size, prototype_shape, num_classes,
                 prototype_activation_function="log"):
        super().__init__()
        self.img_size = img_size
        self.prototype_shape = prototype_shape
        self.num_prototypes = prototype_shape[0]
        self.num_classes = num_classes
        self.epsilon = 1e-4
        self.prototype_activation_function = prototype_activation_function
        self.prototype_class_identity = torch.zeros(self.num_prototypes, self.num_classes)
        per_class = self.num_prototypes // self.num_classes
        for j in range(self.num_prototypes):
            self.prototype_class_identity[j, j // per_class] = 1
        self.features = features
        self.add_on_layers = add_on_layers
        self.prototype_vectors = nn.Parameter(torch.rand(self.prototype_shape), requires_grad=True)
        self.ones = nn.Parameter(torch.ones(self.prototype_shape), requires_grad=False)
        self.last_layer = nn.Linear(self.num_prototypes, self.num_classes, bias=False)

    def conv_features(self, x):
        return self.add_on_layers(self.features(x))

    def _l2_convolution(self, x):
        x2_patch_sum = F.conv2d(input=x ** 2, weight=self.ones)
        p2 = torch.sum(self.prototype_vectors ** 2, dim=(1, 2, 3)).view(-1, 1, 1)
        xp = F.conv2d(input=x, weight=self.prototype_vectors)
        return F.relu(x2_patch_sum - 2 * xp + p2)

    def prototype_distances(self, x):
        return self._l2_convolution(self.conv_features(x))

    def distance_2_similarity(self, distances):
        if self.prototype_activation_function == "log":
            return torch.log((distances + 1) / (distances + self.epsilon))
        if self.prototype_activation_function == "linear":
            return -distances
        return self.prototype_activation_function(distances)

    def forward(self, x):
        distances = self.prototype_distances(x)
        min_distances = -F.max_pool2d(-distances, kernel_size=(distances.size()[2], distances.size()[3]))
        min_distances = min_distances.view(-1, self.num_prototypes)
        prototype_activations = self.distance_2_similarity(min_distances)
        return self.last_layer(prototype_activations), min_distances

    def push_forward(self, x):
        conv_output = self.conv_features(x)
        return conv_output, self._l2_convolution(conv_output)
