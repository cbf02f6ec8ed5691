locals {
  node_layers = { for name, layer in merge(local.secure_layers, local.compute_layer) : name => layer if contains(local.layers, name) }

  # Each layer's instance type alone: what the image choice below depends on, and nothing
  # else (node_layers also names subnets and target groups, which an image must not wait for).
  node_flavors = { for name in local.layers : name => name == "compute" ? var.compute_flavor : var.etcd_flavor }

  # Each layer's architecture, from its instance type (Graviton types are arm64 only).
  node_arch = { for layer, type in data.aws_ec2_instance_type.node : layer => contains(type.supported_architectures, "x86_64") ? "x86_64" : "arm64" }

  # The publishers' public SSM parameters that name their latest image of each operating system.
  image_parameters = {
    "debian-12" = {
      x86_64 = "/aws/service/debian/release/12/latest/amd64"
      arm64  = "/aws/service/debian/release/12/latest/arm64"
    }
    "ubuntu-24.04" = {
      x86_64 = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
      arm64  = "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
    }
    al2023 = {
      x86_64 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
      arm64  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
    }
  }
}

# What each layer's instance type is (its architectures).
data "aws_ec2_instance_type" "node" {
  for_each      = local.node_flavors
  instance_type = each.value
}

# The publisher's latest image of node_os for each layer, unless coreos_image names one.
data "aws_ssm_parameter" "image" {
  for_each = var.coreos_image == "" ? local.node_flavors : {}
  name     = local.image_parameters[var.node_os][local.node_arch[each.key]]
}

# The image each layer boots, kept once chosen: a publisher's new release does not roll the
# nodes; a change of node_os, coreos_image or architecture does.
resource "terraform_data" "image" {
  for_each         = local.node_flavors
  input            = var.coreos_image != "" ? var.coreos_image : data.aws_ssm_parameter.image[each.key].insecure_value
  triggers_replace = [var.node_os, var.coreos_image, local.node_arch[each.key]]

  lifecycle {
    ignore_changes = [input]
  }
}

# The image's own description: its root device (/dev/xvda on Debian and Amazon Linux,
# /dev/sda1 on Ubuntu), which the encrypted root volume must name to replace it.
data "aws_ami" "node" {
  for_each = local.node_flavors

  filter {
    name   = "image-id"
    values = [terraform_data.image[each.key].output]
  }
}

# No EC2 key pair: a launch template's key would stay on its instances for their life, so a
# rotated key would still open them. The node user's authorized_keys comes from the PKI's
# common prefix, kept in step by the node agent.

# One launch template per layer: IMDSv2 only, encrypted root volume, the layer's role and the
# user-data stub (which names its configuration by digest, so a changed configuration changes
# the template and rolls exactly that layer).
resource "aws_launch_template" "node" {
  for_each      = local.node_layers
  name          = "${local.name}-${each.key}"
  image_id      = terraform_data.image[each.key].output
  instance_type = each.value.flavor
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
    device_name = data.aws_ami.node[each.key].root_device_name
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
  for_each = local.node_layers
  name     = "${local.name}-${each.key}"
  min_size = each.value.min
  max_size = each.value.max
  # The group starts at its minimum; afterwards its desired capacity is the operator's (or a
  # cluster autoscaler's) and not this module's (ignore_changes below): AWS moves it into a
  # changed [min, max] itself, so a scale-out survives every later `up`.
  desired_capacity          = each.value.min
  vpc_zone_identifier       = each.value.subnets
  health_check_type         = "EC2"
  health_check_grace_period = each.value.grace
  target_group_arns         = each.value.target_group

  launch_template {
    id      = aws_launch_template.node[each.key].id
    version = aws_launch_template.node[each.key].latest_version
  }

  # AWS's default, said explicitly: left unset, the provider plans "" and reads back nothing
  # when a new template version is applied with the group ("inconsistent final plan"). Not
  # compared afterwards: an API that does not echo it (the sandbox's) is not a change.
  capacity_reservation_specification {
    capacity_reservation_preference = "default"
  }

  # Instances launch only once every firewall rule between the layers exists, so etcd members,
  # kubelets and the pod network reach each other from their first boot.
  depends_on = [
    aws_vpc_security_group_egress_rule.all,
    aws_vpc_security_group_ingress_rule.ssh_compute,
    aws_vpc_security_group_ingress_rule.ssh_private,
    aws_vpc_security_group_ingress_rule.api_public,
    aws_vpc_security_group_ingress_rule.api_vpc,
    aws_vpc_security_group_ingress_rule.etcd_peers,
    aws_vpc_security_group_ingress_rule.etcd_clients,
    aws_vpc_security_group_ingress_rule.kubelet,
    aws_vpc_security_group_ingress_rule.pod_network,
    aws_vpc_security_group_ingress_rule.compute_internal,
  ]

  lifecycle {
    ignore_changes = [capacity_reservation_specification, desired_capacity]
  }

  # A new secure instance waits (Pending:Wait) until kubeplat-etcd-watch on it completes this
  # hook: when its etcd member has joined, been promoted and every member is healthy. An
  # instance refresh (min healthy percentage: one instance at a time) replaces the next one
  # only then; an instance that never gets there is abandoned (terminated) after the timeout.
  # The sandbox's emulator holds no instance in a lifecycle wait, so it has no hook.
  dynamic "initial_lifecycle_hook" {
    for_each = each.key == "secure" && !var.sandbox ? [1] : []
    content {
      name                 = "kubeplat-etcd-joined"
      lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
      default_result       = "ABANDON"
      heartbeat_timeout    = 3600
    }
  }
  # No group is waited for here: its desired capacity is not this module's (ignore_changes), and
  # Terraform's wait would count against the desired capacity it last read, failing after a
  # lowered maximum made AWS scale the group in. kubeplat waits for the secure layer itself
  # after the apply (pipeline.wait_for_secure), reading what the group wants at that moment.
  wait_for_capacity_timeout = "0"

  # The sandbox's emulator has no instance refresh (an apply would wait on it forever); there a
  # changed template takes effect for new instances only. Only the secure layer's refresh starts
  # with the apply: every later layer's is started by the roll controller on the control plane
  # (kubeplat/node/roller.py) once every earlier layer runs its new template, so the layers roll
  # in order, whatever happens to the run that applied.
  dynamic "instance_refresh" {
    for_each = var.sandbox || each.key != "secure" ? [] : [1]
    content {
      strategy = "Rolling"
      preferences {
        min_healthy_percentage = each.value.min_healthy
      }
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, local.cluster_tag, { Name = "${var.environment}-${each.key}", Layer = each.key })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  # What the roll controller reads from the group itself (so changing them rolls no node): the
  # refresh's minimum and maximum healthy percentages and warm-up, and how long a leaving node
  # is drained.
  dynamic "tag" {
    for_each = {
      "kubeplat:min-healthy"     = tostring(each.value.min_healthy)
      "kubeplat:max-healthy"     = tostring(each.value.max_healthy)
      "kubeplat:instance-warmup" = tostring(each.value.grace)
      "kubeplat:drain-timeout"   = tostring(var.node_drain_timeout)
    }
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }
}

locals {
  # The groups' lifecycle hooks, "<layer>/<hook>" → what each holds an instance for:
  # - kubeplat-drain (every group): an instance leaving (a refresh, a scale-in, kubeplat roll)
  #   waits in Terminating:Wait until the roll controller has cordoned and drained its node
  #   (evictions honour PodDisruptionBudgets) or node_drain_timeout has passed; if the controller
  #   is not there to answer, the instance goes after the hook's own timeout.
  # - kubeplat-etcd-leave (secure): an etcd member's instance leaving waits until the etcd leader
  #   has removed its member (kubeplat-etcd-watch), so the members left are all alive: of two
  #   members one of which is gone, none has quorum; one removed first leaves a working cluster.
  # - kubeplat-node-ready (control plane, compute): a new instance goes in service (and a refresh
  #   goes on to the next batch) only once the roll controller sees its node Ready; one that is
  #   not within half an hour is abandoned (terminated), which fails a refresh instead of
  #   replacing good nodes with broken ones.
  lifecycle_hooks = merge(
    { for layer in keys(local.node_layers) : "${layer}/kubeplat-drain" => {
      layer   = layer, transition = "autoscaling:EC2_INSTANCE_TERMINATING", result = "CONTINUE",
      timeout = var.node_drain_timeout + 300
    } },
    { for layer in keys(local.node_layers) : "${layer}/kubeplat-etcd-leave" => {
      layer   = layer, transition = "autoscaling:EC2_INSTANCE_TERMINATING", result = "CONTINUE",
      timeout = 600
    } if layer == "secure" },
    { for layer in keys(local.node_layers) : "${layer}/kubeplat-node-ready" => {
      layer   = layer, transition = "autoscaling:EC2_INSTANCE_LAUNCHING", result = "ABANDON",
      timeout = 1800
    } if layer != "secure" },
  )
}

resource "aws_autoscaling_lifecycle_hook" "node" {
  for_each               = local.lifecycle_hooks
  name                   = split("/", each.key)[1]
  autoscaling_group_name = aws_autoscaling_group.node[each.value.layer].name
  lifecycle_transition   = each.value.transition
  default_result         = each.value.result
  heartbeat_timeout      = each.value.timeout

  lifecycle {
    # No notification: the controller asks the group. The sandbox's emulator answers with a
    # queue and a role of its own; ignoring them keeps an unchanged run a no-op there.
    ignore_changes = [notification_target_arn, role_arn]
  }
}
