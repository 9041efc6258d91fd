<#
.SYNOPSIS
    keyfleet helper common part: the parameters, settings and functions every helper uses.
.DESCRIPTION
    Never run alone: keyfleet sends each helper as one script, this file followed by <helper>.ps1
    (orchestrator/remote.py, load_script), so the server needs no file and the bootstrap command
    line stays constant. The bootstrap runs that script with -Params (the helper's parameters) and
    -Secret (the password, or $null). A helper returns one hashtable, its result; a failure is
    thrown with its kind in Exception.Data['KeyfleetKind'] (Stop-Helper).
#>
param(
    [Parameter(Mandatory = $true)] [psobject] $Params,
    [Security.SecureString] $Secret  # the bootstrap passes it to every helper; the probe needs none
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$HelperVersion = '1.0.0'
$MinimumFreeBytes = 10MB
$MaximumKeyFileBytes = 256KB  # keeps requests under ConvertFrom-Json's 2 MB limit (PowerShell 5.1)
$MaximumOutputChars = 8000
$SetupKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Service Manager\Setup'
$SdkServiceKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Common\SDK Service'
$UninstallEntries = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*'
$KnownToolPaths = @(
    'C:\Program Files\Microsoft System Center\Service Manager\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2022\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2019\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2016\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center 2012 R2\Service Manager\Tools\SecureStorageBackup\SecureStorageBackup.exe'
)

function Stop-Helper([string] $Kind, [string] $Message) {
    $exception = New-Object System.InvalidOperationException $Message
    $exception.Data['KeyfleetKind'] = $Kind
    throw $exception
}

function Get-Param([string] $Name) {
    $property = $Params.PSObject.Properties[$Name]
    if ($null -eq $property) { return $null }
    return $property.Value
}

function Get-ToolTimeout {
    $value = Get-Param 'tool_timeout'
    if ($null -eq $value) { return 120.0 }
    $seconds = $value -as [double]
    if ($null -eq $seconds -or $seconds -le 0) { Stop-Helper 'remote' "tool_timeout must be a positive number of seconds, not '$value'" }
    return $seconds
}

function Test-Administrator {
    $principal = New-Object Security.Principal.WindowsPrincipal ([Security.Principal.WindowsIdentity]::GetCurrent())
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Assert-Administrator {
    if (-not (Test-Administrator)) {
        Stop-Helper 'not-admin' "$env:USERDOMAIN\$env:USERNAME is not a local administrator; SecureStorageBackup.exe needs administrator rights"
    }
}

function Get-RegistryValue([string] $Path, [string] $Name) {
    $item = Get-ItemProperty -LiteralPath $Path -ErrorAction SilentlyContinue
    if ($null -eq $item -or $null -eq $item.PSObject.Properties[$Name]) { return $null }
    return $item.$Name
}

function Get-ScsmRole {
    switch (Get-RegistryValue $SdkServiceKey 'SDK Service Type') {
        1 { return 'management_server' }
        2 { return 'dw_management_server' }
    }
    if ($null -ne (Get-RegistryValue $SetupKey 'PortalVirtualDirectory')) { return 'self_service_portal' }
    return $null
}

function Get-ScsmVersion {
    $best = $null
    foreach ($entry in @(Get-ItemProperty -Path $UninstallEntries -ErrorAction SilentlyContinue)) {
        $properties = $entry.PSObject.Properties
        if ($null -eq $properties['DisplayName'] -or $null -eq $properties['DisplayVersion']) { continue }
        if ([string]$entry.DisplayName -notlike '*Service Manager*') { continue }
        $parsed = $null
        if ([version]::TryParse([string]$entry.DisplayVersion, [ref]$parsed) -and ($null -eq $best -or $parsed -gt $best)) {
            $best = $parsed
        }
    }
    if ($null -eq $best) { return $null }
    return $best.ToString()
}

function Find-Tool {
    $configured = Get-Param 'tool_path'
    if ($configured) {
        if (Test-Path -LiteralPath $configured -PathType Leaf) { return [string]$configured }
        return $null
    }
    $candidates = @()
    $installDirectory = Get-RegistryValue $SetupKey 'InstallDirectory'
    if ($installDirectory) { $candidates += Join-Path $installDirectory 'Tools\SecureStorageBackup\SecureStorageBackup.exe' }
    foreach ($candidate in $candidates + $KnownToolPaths) {
        if (Test-Path -LiteralPath $candidate -PathType Leaf) { return $candidate }
    }
    return $null
}

function Get-RequiredTool {
    $tool = Find-Tool
    if ($null -eq $tool) {
        Stop-Helper 'tool-missing' 'SecureStorageBackup.exe not found: copy Tools\SecureStorageBackup from the Service Manager installation media to this server and set tool_path (or install it in a known location)'
    }
    return $tool
}

function New-PrivateFolder {
    $root = [IO.Path]::GetTempPath()
    $drive = New-Object IO.DriveInfo ([IO.Path]::GetPathRoot($root))
    if ($drive.AvailableFreeSpace -lt $MinimumFreeBytes) {
        Stop-Helper 'disk-full' ('only {0} bytes free on {1} (temporary folder {2}); at least {3} needed' -f $drive.AvailableFreeSpace, $drive.Name, $root, $MinimumFreeBytes)
    }
    $security = New-Object Security.AccessControl.DirectorySecurity
    $security.SetAccessRuleProtection($true, $false)
    $inherit = [Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    foreach ($sid in 'S-1-5-32-544', 'S-1-5-18') {
        $identity = New-Object Security.Principal.SecurityIdentifier $sid
        $rule = New-Object Security.AccessControl.FileSystemAccessRule($identity, 'FullControl', $inherit, 'None', 'Allow')
        $security.AddAccessRule($rule)
    }
    $path = Join-Path $root ('keyfleet-' + [guid]::NewGuid().ToString('N'))
    [IO.Directory]::CreateDirectory($path, $security) | Out-Null
    return $path
}

function Get-Sha256Hex([byte[]] $Bytes) {
    $sha256 = [Security.Cryptography.SHA256]::Create()
    try { return -join ($sha256.ComputeHash($Bytes) | ForEach-Object { $_.ToString('x2') }) }
    finally { $sha256.Dispose() }
}

function Send-Password([IO.StreamWriter] $Writer) {
    $bstr = [Runtime.InteropServices.Marshal]::SecureStringToBSTR($Secret)
    try {
        $plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr)
        # the wizard asks twice: Password, Confirm Password
        $Writer.WriteLine($plain)
        $Writer.WriteLine($plain)
        $Writer.Close()
    }
    catch [IO.IOException] {
        # the tool exited or closed its stdin early: its exit code and output say why
        $Writer.Dispose()
    }
    finally {
        $plain = $null
        [Runtime.InteropServices.Marshal]::ZeroFreeBSTR($bstr)
    }
}

function Invoke-Tool([string] $ToolPath, [string] $Verb, [string] $KeyFile, [double] $TimeoutSeconds) {
    $info = New-Object Diagnostics.ProcessStartInfo
    $info.FileName = $ToolPath
    $info.Arguments = '{0} "{1}"' -f $Verb, $KeyFile
    $info.WorkingDirectory = Split-Path -Parent $KeyFile
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    $info.RedirectStandardInput = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $process = [Diagnostics.Process]::Start($info)
    try {
        $stdout = $process.StandardOutput.ReadToEndAsync()
        $stderr = $process.StandardError.ReadToEndAsync()
        Send-Password $process.StandardInput
        if (-not $process.WaitForExit([int][Math]::Ceiling($TimeoutSeconds * 1000))) {
            $process.Kill()
            $process.WaitForExit()
            Stop-Helper 'tool-timeout' ('SecureStorageBackup.exe did not finish within {0} s and was stopped; it may be waiting for interactive input (a wizard page needs a desktop session). Run it once by hand on this server, or raise tool_timeout.' -f $TimeoutSeconds)
        }
        $process.WaitForExit()
        $output = ($stdout.Result + $stderr.Result).Trim()
        if ($output.Length -gt $MaximumOutputChars) { $output = $output.Substring(0, $MaximumOutputChars) + '...' }
        return @{ exit = $process.ExitCode; output = $output }
    }
    finally {
        $process.Dispose()
    }
}

function New-ToolResult($Role, $Version, [string] $ToolPath, [hashtable] $Run) {
    # the result fields of every helper that ran the tool; $Role and $Version may be $null
    return @{
        role           = $Role
        version        = $Version
        tool_path      = $ToolPath
        tool_exit      = $Run.exit
        tool_output    = $Run.output
        computer_name  = $env:COMPUTERNAME
        helper_version = $HelperVersion
    }
}
