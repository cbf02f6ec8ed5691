locals {
  node_layers = { for name, layer in merge(local.secure_layers, local.compute_layer) : name => layer if contains(local.layers, name) }
}

# The environment's SSH public key, installed on every node.
resource "aws_key_pair" "nodes" {
  key_name   = local.name
  public_key = var.node_ssh_public_key
}

# One launch template per layer: IMDSv2 only, encrypted root volume, the layer's role and the
# user-data stub (which names its configuration by digest, so a changed configuration changes
# the template and rolls exactly that layer).
resource "aws_launch_template" "node" {
  for_each      = local.node_layers
  name          = "${local.name}-${each.key}"
  image_id      = var.coreos_image
  instance_type = each.value.flavor
  key_name      = aws_key_pair.nodes.key_name
  user_data     = base64encode(var.userdata[each.key])
  ebs_optimized = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.node[each.key].arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1 # pods (one hop further) cannot borrow the node role
  }

  monitoring {
    enabled = true
  }

  network_interfaces {
    associate_public_ip_address = each.value.public
    security_groups             = [aws_security_group.layer[each.key].id]
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 40
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = data.aws_kms_key.master.arn
      delete_on_termination = true
    }
  }

  # Instances get their tags from the autoscaling group (propagate_at_launch); volumes from here.
  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.environment}-${each.key}", Layer = each.key })
  }

  tags = { Layer = each.key }

  lifecycle {
    # The AWS emulator of the sandbox reports the template's own tags as one more tag
    # specification; ignoring the block keeps an unchanged run a no-op there. Instance tags come
    # from the group, so nothing that matters is hidden.
    ignore_changes = [tag_specifications]
  }
}

# One autoscaling group per layer, sized by the environment file; a new launch template
# version starts a rolling instance refresh.
resource "aws_autoscaling_group" "node" {
  for_each                  = local.node_layers
  name                      = "${local.name}-${each.key}"
  min_size                  = each.value.min
  max_size                  = each.value.max
  desired_capacity          = each.value.min
  vpc_zone_identifier       = each.value.subnets
  health_check_type         = "EC2"
  health_check_grace_period = each.value.grace
  target_group_arns         = each.value.target_group

  launch_template {
    id      = aws_launch_template.node[each.key].id
    version = aws_launch_template.node[each.key].latest_version
  }

  # The sandbox's emulator has no instance refresh (an apply would wait on it forever); there a
  # changed template takes effect for new instances only.
  dynamic "instance_refresh" {
    for_each = var.sandbox ? [] : [1]
    content {
      strategy = "Rolling"
      preferences {
        min_healthy_percentage = each.value.min_healthy
      }
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.environment}-${each.key}", Layer = each.key })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}
