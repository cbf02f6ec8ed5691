# The compute layer (kubelets): public subnets so operators can SSH in from ssh_access_list.
locals {
  compute_layer = {
    compute = {
      flavor       = var.compute_flavor
      min          = var.compute_asg_min
      max          = var.compute_asg_max
      grace        = var.compute_asg_grace_period
      public       = true
      subnets      = aws_subnet.public[*].id
      min_healthy  = var.compute_roll_min_healthy
      max_healthy  = var.compute_roll_max_healthy
      target_group = []
    }
  }
}
